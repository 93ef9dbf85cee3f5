/*-------------------------------------------------------------------------
 *
 * audit.h
 *	  The rtsub server's audit table, rtsub.audit_log (see audit.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RTSUB_AUDIT_H
#define RTSUB_AUDIT_H

extern void rtsub_audit_record(const char *line);
extern void rtsub_audit_flush(void);

#endif							/* RTSUB_AUDIT_H */
