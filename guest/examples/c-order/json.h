// A small JSON reader and writer for the C example guest: parses a document into a tree
// of values (RFC 8259, UTF-8, with \u escapes) and appends escaped strings to a buffer.
#ifndef C_ORDER_JSON_H
#define C_ORDER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    bool boolean;             // JSON_BOOL
    bool is_integer;          // JSON_NUMBER: written without fraction or exponent, fits int64
    int64_t integer;          // JSON_NUMBER when is_integer
    char *string;             // JSON_STRING: decoded, NUL-terminated
    size_t string_len;        // JSON_STRING: decoded length in bytes
    char *key;                // member name when this value sits in an object
    struct json_value *first; // JSON_ARRAY / JSON_OBJECT: first element or member
    struct json_value *next;  // next sibling in the parent array or object
} json_value;

// The error json_parse points at when an allocation failed.
#define JSON_OUT_OF_MEMORY "out of memory"

// Parses `len` bytes of `text`. On failure returns NULL and points *error at a static message
// (with the byte offset in *error_offset). Free the result with json_free.
json_value *json_parse(const char *text, size_t len, const char **error, size_t *error_offset);
void json_free(json_value *value);

// The member `key` of an object, or NULL.
json_value *json_get(const json_value *object, const char *key);

// A growable output buffer.
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} json_buffer;

void json_append(json_buffer *buffer, const char *text);
void json_append_int(json_buffer *buffer, int64_t number);
// Appends `text` as a quoted, escaped JSON string.
void json_append_string(json_buffer *buffer, const char *text, size_t len);

#endif
