/* Strict JSON parser: see json.h. Recursive descent with a depth bound. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  const char *s;
  size_t n, i;
  int depth;
  const char *err;
} P;

static jnode *parse_value(P *p);

static void ws(P *p) {
  while (p->i < p->n) {
    char c = p->s[p->i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->i++;
  }
}

static jnode *node(P *p, int type) {
  jnode *n = calloc(1, sizeof *n);
  if (!n) p->err = "out of memory";
  else n->type = type;
  return n;
}

void json_free(jnode *n) {
  while (n) {
    jnode *next = n->next;
    json_free(n->child);
    free(n->str);
    free(n->key);
    free(n);
    n = next;
  }
}

static int hex4(P *p, unsigned *out) {
  unsigned v = 0;
  if (p->n - p->i < 4) return -1;
  for (int k = 0; k < 4; k++) {
    char c = p->s[p->i++];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Length of a valid UTF-8 sequence at s (max bytes left), or 0 when invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t max) {
  unsigned c = s[0], cp;
  size_t len;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
  else return 0;
  if (len > max) return 0;
  for (size_t k = 1; k < len; k++) {
    if ((s[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

/* Parses a string starting at the opening quote; returns a malloc'd copy. */
static char *parse_string(P *p) {
  if (p->i >= p->n || p->s[p->i] != '"') { p->err = "expected string"; return NULL; }
  p->i++;
  /* The decoded form is never longer than the encoded one. */
  size_t start = p->i, cap = 1;
  while (start + cap - 1 < p->n && p->s[start + cap - 1] != '"') cap += (p->s[start + cap - 1] == '\\') ? 2 : 1;
  char *out = malloc(cap + 4);
  if (!out) { p->err = "out of memory"; return NULL; }
  size_t o = 0;
  for (;;) {
    if (p->i >= p->n) { p->err = "unterminated string"; break; }
    unsigned char c = (unsigned char)p->s[p->i];
    if (c == '"') { p->i++; out[o] = 0; return out; }
    if (c < 0x20) { p->err = "control character in string"; break; }
    if (c != '\\') {
      size_t l = utf8_len((const unsigned char *)p->s + p->i, p->n - p->i);
      if (!l) { p->err = "invalid UTF-8"; break; }
      memcpy(out + o, p->s + p->i, l);
      o += l;
      p->i += l;
      continue;
    }
    p->i++;
    if (p->i >= p->n) { p->err = "unterminated escape"; break; }
    char e = p->s[p->i++];
    unsigned cp;
    switch (e) {
      case '"': out[o++] = '"'; continue;
      case '\\': out[o++] = '\\'; continue;
      case '/': out[o++] = '/'; continue;
      case 'b': out[o++] = '\b'; continue;
      case 'f': out[o++] = '\f'; continue;
      case 'n': out[o++] = '\n'; continue;
      case 'r': out[o++] = '\r'; continue;
      case 't': out[o++] = '\t'; continue;
      case 'u':
        if (hex4(p, &cp)) { p->err = "bad \\u escape"; goto fail; }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          unsigned lo;
          if (p->n - p->i < 6 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') { p->err = "lone surrogate"; goto fail; }
          p->i += 2;
          if (hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) { p->err = "lone surrogate"; goto fail; }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          p->err = "lone surrogate";
          goto fail;
        }
        if (cp == 0) { p->err = "NUL in string"; goto fail; }
        o += put_utf8(out + o, cp);
        continue;
      default: p->err = "bad escape"; goto fail;
    }
  }
fail:
  free(out);
  return NULL;
}

static int isdigit_(char c) { return c >= '0' && c <= '9'; }

static jnode *parse_number(P *p) {
  size_t st = p->i;
  if (p->i < p->n && p->s[p->i] == '-') p->i++;
  if (p->i >= p->n) { p->err = "bad number"; return NULL; }
  if (p->s[p->i] == '0') p->i++;
  else if (isdigit_(p->s[p->i])) while (p->i < p->n && isdigit_(p->s[p->i])) p->i++;
  else { p->err = "bad number"; return NULL; }
  if (p->i < p->n && p->s[p->i] == '.') {
    p->i++;
    if (p->i >= p->n || !isdigit_(p->s[p->i])) { p->err = "bad number"; return NULL; }
    while (p->i < p->n && isdigit_(p->s[p->i])) p->i++;
  }
  if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
    p->i++;
    if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
    if (p->i >= p->n || !isdigit_(p->s[p->i])) { p->err = "bad number"; return NULL; }
    while (p->i < p->n && isdigit_(p->s[p->i])) p->i++;
  }
  size_t len = p->i - st;
  char buf[64];
  if (len >= sizeof buf) { p->err = "number too long"; return NULL; }
  memcpy(buf, p->s + st, len);
  buf[len] = 0;
  jnode *n = node(p, J_NUM);
  if (n) n->num = strtod(buf, NULL);
  return n;
}

static int literal(P *p, const char *w) {
  size_t l = strlen(w);
  if (p->n - p->i < l || memcmp(p->s + p->i, w, l) != 0) return 0;
  p->i += l;
  return 1;
}

static jnode *parse_container(P *p, int type) {
  char close = type == J_OBJ ? '}' : ']';
  if (++p->depth > JSON_MAX_DEPTH) { p->err = "nested too deeply"; return NULL; }
  p->i++; /* opening bracket */
  jnode *n = node(p, type);
  if (!n) return NULL;
  jnode **tail = &n->child;
  ws(p);
  if (p->i < p->n && p->s[p->i] == close) { p->i++; p->depth--; return n; }
  for (;;) {
    char *key = NULL;
    if (type == J_OBJ) {
      ws(p);
      key = parse_string(p);
      if (!key) goto fail;
      for (jnode *m = n->child; m; m = m->next)
        if (strcmp(m->key, key) == 0) { p->err = "duplicate key"; free(key); goto fail; }
      ws(p);
      if (p->i >= p->n || p->s[p->i] != ':') { p->err = "expected ':'"; free(key); goto fail; }
      p->i++;
    }
    jnode *v = parse_value(p);
    if (!v) { free(key); goto fail; }
    v->key = key;
    *tail = v;
    tail = &v->next;
    ws(p);
    if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
    if (p->i < p->n && p->s[p->i] == close) { p->i++; p->depth--; return n; }
    p->err = type == J_OBJ ? "expected ',' or '}'" : "expected ',' or ']'";
    goto fail;
  }
fail:
  json_free(n);
  return NULL;
}

static jnode *parse_value(P *p) {
  ws(p);
  if (p->i >= p->n) { p->err = "unexpected end"; return NULL; }
  char c = p->s[p->i];
  jnode *n;
  switch (c) {
    case '{': return parse_container(p, J_OBJ);
    case '[': return parse_container(p, J_ARR);
    case '"': {
      char *s = parse_string(p);
      if (!s) return NULL;
      n = node(p, J_STR);
      if (!n) { free(s); return NULL; }
      n->str = s;
      return n;
    }
    case 't': if (literal(p, "true")) { n = node(p, J_BOOL); if (n) n->b = 1; return n; } break;
    case 'f': if (literal(p, "false")) return node(p, J_BOOL); break;
    case 'n': if (literal(p, "null")) return node(p, J_NULL); break;
    default: if (c == '-' || isdigit_(c)) return parse_number(p);
  }
  p->err = "unexpected character";
  return NULL;
}

jnode *json_parse(const char *text, size_t len, const char **err) {
  P p = { text, len, 0, 0, NULL };
  jnode *n = parse_value(&p);
  if (n) {
    ws(&p);
    if (p.i != p.n) { p.err = "trailing characters"; json_free(n); n = NULL; }
  }
  if (!n && err) *err = p.err ? p.err : "parse error";
  return n;
}

const jnode *json_get(const jnode *obj, const char *key) {
  if (!obj || obj->type != J_OBJ) return NULL;
  for (const jnode *m = obj->child; m; m = m->next)
    if (strcmp(m->key, key) == 0) return m;
  return NULL;
}

static void wr(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

static void write_str(int fd, const char *s) {
  wr(fd, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; wr(fd, esc, 2); }
    else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); wr(fd, esc, 6); }
    else wr(fd, (const char *)&c, 1);
  }
  wr(fd, "\"", 1);
}

void json_write(int fd, const jnode *n) {
  char buf[40];
  switch (n->type) {
    case J_NULL: wr(fd, "null", 4); break;
    case J_BOOL: n->b ? wr(fd, "true", 4) : wr(fd, "false", 5); break;
    case J_NUM: wr(fd, buf, (size_t)snprintf(buf, sizeof buf, "%.17g", n->num)); break;
    case J_STR: write_str(fd, n->str); break;
    default:
      wr(fd, n->type == J_OBJ ? "{" : "[", 1);
      for (const jnode *m = n->child; m; m = m->next) {
        if (m != n->child) wr(fd, ",", 1);
        if (n->type == J_OBJ) { write_str(fd, m->key); wr(fd, ":", 1); }
        json_write(fd, m);
      }
      wr(fd, n->type == J_OBJ ? "}" : "]", 1);
  }
}
