/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The rtsub server background worker: registration from _PG_init and
 *	  its entry point.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_WORKER_H
#define RTSUB_WORKER_H

#include "postgres.h"

extern void rtsub_worker_init(void);
extern PGDLLEXPORT void rtsub_worker_main(Datum main_arg);
extern void rtsub_worker_open_stream_now(void);

#endif							/* RTSUB_WORKER_H */
