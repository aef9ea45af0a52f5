// See json.h.
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *text;
    size_t len;
    size_t pos;
    const char *error;
    int depth;
} parser;

enum { MAX_DEPTH = 128 };

static json_value *parse_value(parser *p);

static bool fail(parser *p, const char *message) {
    if (!p->error) p->error = message;
    return false;
}

static void skip_space(parser *p) {
    while (p->pos < p->len) {
        char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static bool consume(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0) return false;
    p->pos += n;
    return true;
}

static json_value *new_value(parser *p, json_type type) {
    json_value *value = calloc(1, sizeof *value);
    if (!value) fail(p, JSON_OUT_OF_MEMORY);
    else value->type = type;
    return value;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(parser *p, uint32_t *out) {
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    uint32_t code = 0;
    for (int i = 0; i < 4; i++) {
        int digit = hex_digit(p->text[p->pos++]);
        if (digit < 0) return fail(p, "invalid \\u escape");
        code = code << 4 | (uint32_t)digit;
    }
    *out = code;
    return true;
}

static size_t put_utf8(char *out, uint32_t code) {
    if (code < 0x80) { out[0] = (char)code; return 1; }
    if (code < 0x800) {
        out[0] = (char)(0xC0 | code >> 6); out[1] = (char)(0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out[0] = (char)(0xE0 | code >> 12); out[1] = (char)(0x80 | (code >> 6 & 0x3F));
        out[2] = (char)(0x80 | (code & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | code >> 18); out[1] = (char)(0x80 | (code >> 12 & 0x3F));
    out[2] = (char)(0x80 | (code >> 6 & 0x3F)); out[3] = (char)(0x80 | (code & 0x3F));
    return 4;
}

// Parses a string at p->pos (which holds the opening quote) into a new NUL-terminated buffer.
static char *parse_string(parser *p, size_t *out_len) {
    p->pos++;  // opening quote
    // Decoded text is never longer than the source.
    char *out = malloc(p->len - p->pos + 1);
    if (!out) { fail(p, JSON_OUT_OF_MEMORY); return NULL; }
    size_t n = 0;
    while (p->pos < p->len) {
        unsigned char c = (unsigned char)p->text[p->pos++];
        if (c == '"') {
            out[n] = '\0';
            *out_len = n;
            return out;
        }
        if (c < 0x20) { fail(p, "control character in string"); break; }
        if (c != '\\') { out[n++] = (char)c; continue; }
        if (p->pos >= p->len) break;
        char escape = p->text[p->pos++];
        switch (escape) {
            case '"': out[n++] = '"'; break;
            case '\\': out[n++] = '\\'; break;
            case '/': out[n++] = '/'; break;
            case 'b': out[n++] = '\b'; break;
            case 'f': out[n++] = '\f'; break;
            case 'n': out[n++] = '\n'; break;
            case 'r': out[n++] = '\r'; break;
            case 't': out[n++] = '\t'; break;
            case 'u': {
                uint32_t code;
                if (!read_hex4(p, &code)) goto error;
                if (code >= 0xD800 && code <= 0xDBFF) {
                    uint32_t low;
                    if (!consume(p, "\\u") || !read_hex4(p, &low) || low < 0xDC00 || low > 0xDFFF) {
                        fail(p, "unpaired surrogate in \\u escape");
                        goto error;
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                } else if (code >= 0xDC00 && code <= 0xDFFF) {
                    fail(p, "unpaired surrogate in \\u escape");
                    goto error;
                }
                n += put_utf8(out + n, code);
                break;
            }
            default: fail(p, "invalid escape in string"); goto error;
        }
    }
    fail(p, "unterminated string");
error:
    free(out);
    return NULL;
}

static bool parse_number(parser *p, json_value *value) {
    bool negative = p->pos < p->len && p->text[p->pos] == '-';
    if (negative) p->pos++;
    if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9') return fail(p, "invalid number");
    if (p->text[p->pos] == '0' && p->pos + 1 < p->len && p->text[p->pos + 1] >= '0' && p->text[p->pos + 1] <= '9')
        return fail(p, "leading zero in number");
    bool fits = true;
    uint64_t magnitude = 0;
    while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') {
        unsigned digit = (unsigned)(p->text[p->pos++] - '0');
        if (magnitude > (UINT64_MAX - digit) / 10) fits = false;
        else magnitude = magnitude * 10 + digit;
    }
    bool integral = true;
    if (p->pos < p->len && p->text[p->pos] == '.') {
        integral = false;
        p->pos++;
        if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9') return fail(p, "invalid number");
        while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->len && (p->text[p->pos] == 'e' || p->text[p->pos] == 'E')) {
        integral = false;
        p->pos++;
        if (p->pos < p->len && (p->text[p->pos] == '+' || p->text[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9') return fail(p, "invalid number");
        while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') p->pos++;
    }
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    value->is_integer = integral && fits && magnitude <= limit;
    if (value->is_integer) value->integer = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return true;
}

// Parses the elements of an array or the members of an object; p->pos is past the opener.
static bool parse_children(parser *p, json_value *parent, char closer, bool members) {
    json_value **tail = &parent->first;
    skip_space(p);
    if (p->pos < p->len && p->text[p->pos] == closer) { p->pos++; return true; }
    for (;;) {
        char *key = NULL;
        if (members) {
            skip_space(p);
            if (p->pos >= p->len || p->text[p->pos] != '"') return fail(p, "expected a member name");
            size_t key_len;
            key = parse_string(p, &key_len);
            if (!key) return false;
            skip_space(p);
            if (!consume(p, ":")) { free(key); return fail(p, "expected ':' after a member name"); }
        }
        json_value *child = parse_value(p);
        if (!child) { free(key); return false; }
        child->key = key;
        *tail = child;
        tail = &child->next;
        skip_space(p);
        if (p->pos < p->len && p->text[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->text[p->pos] == closer) { p->pos++; return true; }
        return fail(p, members ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static json_value *parse_value(parser *p) {
    skip_space(p);
    if (p->pos >= p->len) { fail(p, "unexpected end of input"); return NULL; }
    if (++p->depth > MAX_DEPTH) { fail(p, "nested too deeply"); return NULL; }
    json_value *value = NULL;
    char c = p->text[p->pos];
    if (c == '{' || c == '[') {
        p->pos++;
        value = new_value(p, c == '{' ? JSON_OBJECT : JSON_ARRAY);
        if (value && !parse_children(p, value, c == '{' ? '}' : ']', c == '{')) { json_free(value); value = NULL; }
    } else if (c == '"') {
        value = new_value(p, JSON_STRING);
        if (value && !(value->string = parse_string(p, &value->string_len))) { free(value); value = NULL; }
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        value = new_value(p, JSON_NUMBER);
        if (value && !parse_number(p, value)) { free(value); value = NULL; }
    } else if (consume(p, "true") || consume(p, "false")) {
        value = new_value(p, JSON_BOOL);
        if (value) value->boolean = c == 't';
    } else if (consume(p, "null")) {
        value = new_value(p, JSON_NULL);
    } else {
        fail(p, "unexpected character");
    }
    p->depth--;
    return value;
}

json_value *json_parse(const char *text, size_t len, const char **error, size_t *error_offset) {
    parser p = {.text = text, .len = len};
    json_value *value = parse_value(&p);
    skip_space(&p);
    if (value && p.pos != p.len) {
        fail(&p, "unexpected text after the JSON value");
        json_free(value);
        value = NULL;
    }
    if (!value) {
        *error = p.error ? p.error : "invalid JSON";
        *error_offset = p.pos;
    }
    return value;
}

void json_free(json_value *value) {
    while (value) {
        json_value *next = value->next;
        json_free(value->first);
        free(value->string);
        free(value->key);
        free(value);
        value = next;
    }
}

json_value *json_get(const json_value *object, const char *key) {
    if (!object || object->type != JSON_OBJECT) return NULL;
    for (json_value *member = object->first; member; member = member->next)
        if (strcmp(member->key, key) == 0) return member;
    return NULL;
}

static void reserve(json_buffer *buffer, size_t extra) {
    if (buffer->len + extra + 1 <= buffer->cap) return;
    size_t cap = buffer->cap ? buffer->cap : 256;
    while (cap < buffer->len + extra + 1) cap *= 2;
    char *data = realloc(buffer->data, cap);
    if (!data) abort();
    buffer->data = data;
    buffer->cap = cap;
}

static void append_bytes(json_buffer *buffer, const char *bytes, size_t len) {
    reserve(buffer, len);
    memcpy(buffer->data + buffer->len, bytes, len);
    buffer->len += len;
    buffer->data[buffer->len] = '\0';
}

void json_append(json_buffer *buffer, const char *text) { append_bytes(buffer, text, strlen(text)); }

void json_append_int(json_buffer *buffer, int64_t number) {
    char digits[24];
    snprintf(digits, sizeof digits, "%lld", (long long)number);
    json_append(buffer, digits);
}

void json_append_string(json_buffer *buffer, const char *text, size_t len) {
    append_bytes(buffer, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        char escaped[8];
        if (c == '"' || c == '\\') {
            escaped[0] = '\\'; escaped[1] = (char)c;
            append_bytes(buffer, escaped, 2);
        } else if (c < 0x20) {
            snprintf(escaped, sizeof escaped, "\\u%04x", c);
            append_bytes(buffer, escaped, 6);
        } else {
            append_bytes(buffer, (const char *)&c, 1);
        }
    }
    append_bytes(buffer, "\"", 1);
}
