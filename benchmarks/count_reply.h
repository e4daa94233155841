/*
 * The count protocol's reply in C, with the rules of primecount.core.count:
 * decode UTF-8 (strictly), strip what Python's str.isspace() strips, count
 * the occurrences of the last code point, say whether that count is prime.
 *
 * Shared by benchmarks/cload.c (which checks every reply it gets) and
 * benchmarks/baselines/c_epoll_server.c (which gives them), so the two
 * cannot disagree; tests/system/test_cload.py checks both against Python.
 */
#ifndef PRIMECOUNT_COUNT_REPLY_H
#define PRIMECOUNT_COUNT_REPLY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* count_reply's answers that are ERR lines. */
#define COUNT_INVALID_UTF8 (-1)
#define COUNT_EMPTY (-2)

/* Decode UTF-8 into code points; -1 when the bytes are not valid UTF-8. */
static long decode_utf8(const unsigned char *s, size_t n, uint32_t *out)
{
    size_t i = 0;
    long m = 0;
    while (i < n) {
        uint32_t c = s[i], min;
        int more;
        if (c < 0x80) { more = 0; min = 0; }
        else if ((c & 0xe0) == 0xc0) { c &= 0x1f; more = 1; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { c &= 0x0f; more = 2; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { c &= 0x07; more = 3; min = 0x10000; }
        else return -1;
        for (int k = 1; k <= more; k++) {
            if (i + k >= n || (s[i + k] & 0xc0) != 0x80) return -1;
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return -1;
        out[m++] = c;
        i += (size_t)more + 1;
    }
    return m;
}

/* Python's str.isspace(). */
static int is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

static int is_prime(long k)
{
    if (k < 2) return 0;
    for (long d = 2; d * d <= k; d++)
        if (k % d == 0) return 0;
    return 1;
}

/*
 * The reply to one message (without its LF) into out (at least 64 bytes),
 * using cps (room for n code points): the reply's length, or COUNT_EMPTY /
 * COUNT_INVALID_UTF8 for a message answered with that ERR line.
 */
static int count_reply(const char *message, size_t n, uint32_t *cps, char *out)
{
    long m = decode_utf8((const unsigned char *)message, n, cps);
    if (m < 0) return COUNT_INVALID_UTF8;
    long lo = 0, hi = m;
    while (lo < hi && is_space(cps[lo])) lo++;
    while (hi > lo && is_space(cps[hi - 1])) hi--;
    if (lo == hi) return COUNT_EMPTY;
    long k = 0;
    uint32_t last = cps[hi - 1];
    for (long i = lo; i < hi; i++) k += cps[i] == last;
    return snprintf(out, 64, "%ld %s\n", k, is_prime(k) ? "s\xc3\xad" : "no");
}

#endif
