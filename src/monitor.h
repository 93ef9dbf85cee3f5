/*-------------------------------------------------------------------------
 *
 * monitor.h
 *	  SQL observability of the rtsub server: rtsub.connections,
 *	  rtsub.active_subscriptions and rtsub.stats() (see monitor.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_MONITOR_H
#define RTSUB_MONITOR_H

extern void rtsub_monitor_serve(void);

#endif							/* RTSUB_MONITOR_H */
