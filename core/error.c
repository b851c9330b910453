/*
 * error.c - error codes, their names and texts, and error records.
 *
 * Codes are negated errno values or the VDK_E* engine codes of vdk.h. A
 * vdk_error carries one code and a one-line message; it lives with the
 * caller (per request or per call), never in a global.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "driver.h"

static const struct {
    int code;
    const char *name;
    const char *text;
} engine_codes[] = {
    {VDK_ECORRUPT, "CORRUPT", "image is corrupt"},
    {VDK_EUNSUPPORTED, "UNSUPPORTED", "unsupported feature"},
    {VDK_EFORMAT, "FORMAT", "unknown or invalid image format"},
    {VDK_ELOCKED, "LOCKED", "image is in use by another process"},
    {VDK_EOPTION, "OPTION", "invalid option"},
    {VDK_ETOOBIG, "TOOBIG", "value exceeds a limit"},
    {VDK_EBROKEN, "BROKEN", "image is in an error state after a failed metadata write"},
    {VDK_ECANCELED, "CANCELED", "operation canceled"},
};

#define ERRNO_NAME(e) {e, #e}
static const struct {
    int err;
    const char *name;
} errno_names[] = {
    ERRNO_NAME(EPERM),  ERRNO_NAME(ENOENT),  ERRNO_NAME(EIO),     ERRNO_NAME(ENXIO),
    ERRNO_NAME(EBADF),  ERRNO_NAME(EAGAIN),  ERRNO_NAME(ENOMEM),  ERRNO_NAME(EACCES),
    ERRNO_NAME(EFAULT), ERRNO_NAME(EBUSY),   ERRNO_NAME(EEXIST),  ERRNO_NAME(EXDEV),
    ERRNO_NAME(ENODEV), ERRNO_NAME(ENOTDIR), ERRNO_NAME(EISDIR),  ERRNO_NAME(EINVAL),
    ERRNO_NAME(EMFILE), ERRNO_NAME(EFBIG),   ERRNO_NAME(ENOSPC),  ERRNO_NAME(ESPIPE),
    ERRNO_NAME(EROFS),  ERRNO_NAME(EPIPE),   ERRNO_NAME(ERANGE),  ERRNO_NAME(ENAMETOOLONG),
    ERRNO_NAME(ENOSYS), ERRNO_NAME(ELOOP),   ERRNO_NAME(ENOTSUP), ERRNO_NAME(EOVERFLOW),
    ERRNO_NAME(ECONNREFUSED), ERRNO_NAME(ECONNRESET), ERRNO_NAME(ETIMEDOUT),
    ERRNO_NAME(ECANCELED), ERRNO_NAME(EDQUOT), ERRNO_NAME(ESHUTDOWN),
};

const char *vdk_strerror(int code)
{
    if (code == 0)
        return "success";
    for (size_t i = 0; i < sizeof engine_codes / sizeof engine_codes[0]; i++)
        if (engine_codes[i].code == code)
            return engine_codes[i].text;
    if (code < 0 && -code < VDK_E_FIRST)
        return strerror(-code); /* glibc: thread-safe for known codes */
    return "unknown error";
}

const char *vdk_errname(int code)
{
    if (code == 0)
        return "OK";
    for (size_t i = 0; i < sizeof engine_codes / sizeof engine_codes[0]; i++)
        if (engine_codes[i].code == code)
            return engine_codes[i].name;
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (errno_names[i].err == -code)
            return errno_names[i].name;
    return "EUNKNOWN";
}

void vdk_error_clear(vdk_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

int vdk_fail(vdk_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* Messages are one line. */
        for (char *p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        err->code = code;
    }
    return code;
}

void vdk_error_prefix(vdk_error *err, const char *prefix)
{
    if (!err || !prefix || !*prefix)
        return;
    size_t plen = strlen(prefix);
    /* Do not repeat a prefix already there. */
    if (strncmp(err->msg, prefix, plen) == 0 && err->msg[plen] == ':')
        return;
    char tmp[2 * sizeof err->msg];
    int n = snprintf(tmp, sizeof tmp, "%s: %s", prefix,
                     err->msg[0] ? err->msg : vdk_strerror(err->code));
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len >= sizeof err->msg)
        len = sizeof err->msg - 1; /* long messages are truncated */
    memcpy(err->msg, tmp, len);
    err->msg[len] = '\0';
}
