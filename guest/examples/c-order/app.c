// Example guest in C: validates an order and prices it.
//
// Same contract as every example (guest/examples/README.md). Build: guest/build.sh c-order
// (wit-bindgen c, then clang + wasi-libc, then wasm-tools component new with the
// preview1 reactor adapter).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"
#include "json.h"

// Fails the task with Order.Invalid and `cause`; returns false for exports_handler_handle.
static bool invalid(handler_task_error_t *err, const char *cause) {
    handler_string_dup(&err->error, "Order.Invalid");
    handler_string_dup(&err->cause, cause);
    return false;
}

// The integer value of `value` when it is an integer >= minimum, else false.
static bool integer_at_least(const json_value *value, int64_t minimum, int64_t *out) {
    if (!value || value->type != JSON_NUMBER || !value->is_integer || value->integer < minimum) return false;
    *out = value->integer;
    return true;
}

static bool non_empty_string(const json_value *value) {
    return value && value->type == JSON_STRING && value->string_len > 0;
}

// Prices `order` into `out`; on bad input writes the cause into `cause` and returns false.
static bool price(const json_value *order, json_buffer *out, char *cause, size_t cause_size) {
    if (order->type != JSON_OBJECT) {
        snprintf(cause, cause_size, "input must be a JSON object");
        return false;
    }
    const json_value *order_id = json_get(order, "order_id");
    if (!non_empty_string(order_id)) {
        snprintf(cause, cause_size, "order_id must be a non-empty string");
        return false;
    }
    const json_value *items = json_get(order, "items");
    if (!items || items->type != JSON_ARRAY || !items->first) {
        snprintf(cause, cause_size, "items must be a non-empty array");
        return false;
    }
    int64_t discount = 0;
    const json_value *discount_value = json_get(order, "discount_percent");
    if (discount_value && !integer_at_least(discount_value, 0, &discount)) {
        snprintf(cause, cause_size, "discount_percent must be a non-negative integer");
        return false;
    }
    if (discount > 100) {
        snprintf(cause, cause_size, "discount_percent must be between 0 and 100");
        return false;
    }
    int64_t lines = 0, item_count = 0, subtotal = 0;
    for (const json_value *line = items->first; line; line = line->next, lines++) {
        int64_t quantity, unit_price;
        if (line->type != JSON_OBJECT) {
            snprintf(cause, cause_size, "items[%lld] must be an object", (long long)lines);
            return false;
        }
        if (!non_empty_string(json_get(line, "sku"))) {
            snprintf(cause, cause_size, "items[%lld].sku must be a non-empty string", (long long)lines);
            return false;
        }
        if (!integer_at_least(json_get(line, "quantity"), 1, &quantity)) {
            snprintf(cause, cause_size, "items[%lld].quantity must be a positive integer", (long long)lines);
            return false;
        }
        if (!integer_at_least(json_get(line, "unit_price_cents"), 0, &unit_price)) {
            snprintf(cause, cause_size, "items[%lld].unit_price_cents must be a non-negative integer",
                     (long long)lines);
            return false;
        }
        if (__builtin_mul_overflow(quantity, unit_price, &unit_price) ||
            __builtin_add_overflow(subtotal, unit_price, &subtotal) ||
            __builtin_add_overflow(item_count, quantity, &item_count)) {
            snprintf(cause, cause_size, "items[%lld] makes the order total overflow", (long long)lines);
            return false;
        }
    }
    int64_t discount_cents = subtotal / 100 * discount + subtotal % 100 * discount / 100;
    json_append(out, "{\"order_id\":");
    json_append_string(out, order_id->string, order_id->string_len);
    json_append(out, ",\"lines\":");
    json_append_int(out, lines);
    json_append(out, ",\"item_count\":");
    json_append_int(out, item_count);
    json_append(out, ",\"subtotal_cents\":");
    json_append_int(out, subtotal);
    json_append(out, ",\"discount_cents\":");
    json_append_int(out, discount_cents);
    json_append(out, ",\"total_cents\":");
    json_append_int(out, subtotal - discount_cents);
    json_append(out, ",\"status\":\"accepted\"}");
    return true;
}

bool exports_handler_handle(handler_string_t *input, handler_task_context_t *context, handler_string_t *ret,
                            handler_task_error_t *err) {
    // The handler owns its arguments.
    handler_task_context_free(context);
    const char *parse_error;
    size_t error_offset;
    json_value *order = json_parse((const char *)input->ptr, input->len, &parse_error, &error_offset);
    handler_string_free(input);
    char cause[256];
    if (!order && strcmp(parse_error, JSON_OUT_OF_MEMORY) == 0) {
        // The worker's name for a guest out of memory; it adds the limit to the cause.
        handler_string_dup(&err->error, "Wasm.OutOfMemory");
        handler_string_dup(&err->cause, "the order does not fit in memory");
        return false;
    }
    if (!order) {
        snprintf(cause, sizeof cause, "input is not JSON: %s at byte %zu", parse_error, error_offset);
        return invalid(err, cause);
    }
    json_buffer out = {0};
    bool ok = price(order, &out, cause, sizeof cause);
    const json_value *wants_heartbeat = json_get(order, "heartbeat");
    if (ok && wants_heartbeat && wants_heartbeat->type == JSON_BOOL && wants_heartbeat->boolean) {
        // Heartbeat as a long-running handler would; an error means the task is over.
        handler_string_t reason;
        if (!sfn_activity_host_heartbeat(&reason)) {
            free(out.data);
            json_free(order);
            handler_string_dup(&err->error, "Order.Cancelled");
            err->cause = reason;  // ownership moves to the result
            return false;
        }
    }
    if (ok) {
        char message[160];
        const json_value *order_id = json_get(order, "order_id");
        snprintf(message, sizeof message, "order %.100s priced", order_id->string);
        handler_string_t log_line;
        handler_string_set(&log_line, message);
        sfn_activity_host_log(SFN_ACTIVITY_HOST_LOG_LEVEL_INFO, &log_line);
        // The returned string's buffer is freed by the generated post-return function.
        ret->ptr = (uint8_t *)out.data;
        ret->len = out.len;
    }
    json_free(order);
    return ok ? true : invalid(err, cause);
}
