/* Minimal strict JSON (RFC 8259) parser for aether-init's fixed config schema.
 * The tree is built from malloc'd nodes; strings are NUL-terminated UTF-8 and
 * may not contain U+0000 (C strings could not carry it, so it is rejected). */
#ifndef AETHER_JSON_H
#define AETHER_JSON_H
#include <stddef.h>

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jnode {
  int type;
  int b;              /* J_BOOL */
  double num;         /* J_NUM */
  char *str;          /* J_STR */
  char *key;          /* set when the node is an object member */
  struct jnode *child; /* first element / member */
  struct jnode *next;  /* next sibling */
} jnode;

#define JSON_MAX_DEPTH 32

/* Parses exactly one JSON value spanning text[0..len) (surrounding whitespace allowed).
 * Returns NULL and sets *err on any syntax error, duplicate object key, depth > JSON_MAX_DEPTH. */
jnode *json_parse(const char *text, size_t len, const char **err);
void json_free(jnode *n);
/* Member of an object by key, or NULL. */
const jnode *json_get(const jnode *obj, const char *key);
/* Writes n as compact JSON to fd (used by the self-test mode). */
void json_write(int fd, const jnode *n);

#endif
