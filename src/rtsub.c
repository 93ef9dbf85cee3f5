/*-------------------------------------------------------------------------
 *
 * rtsub.c
 *	  Module entry point: PG_MODULE_MAGIC and _PG_init, which reserves the
 *	  "rtsub." settings prefix.  The output plugin's entry point,
 *	  _PG_output_plugin_init, lives in decoder.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "config.h"
#include "rtsub.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* reserve the rtsub. prefix; the server's settings are defined here too */
void
_PG_init(void)
{
	rtsub_define_settings();
	rtsub_worker_init();
	MarkGUCPrefixReserved("rtsub");
}
