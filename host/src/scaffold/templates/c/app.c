// {{name}}: a sfn-wasm-worker task handler in C (see README.md). It answers every task with
// its input wrapped in an object, and fails an empty input with a chosen error.
#include <stdlib.h>
#include <string.h>

#include "handler.h"

bool exports_handler_handle(handler_string_t *input, handler_task_context_t *context,
                            handler_string_t *ret, handler_task_error_t *err) {
    bool ok = input->len > 0;
    if (ok) {
        // The input is JSON (Step Functions sends nothing else), so this is JSON too.
        static const char head[] = "{\"received\":";
        size_t size = sizeof head - 1 + input->len + 1;
        char *output = malloc(size);
        memcpy(output, head, sizeof head - 1);
        memcpy(output + sizeof head - 1, input->ptr, input->len);
        output[size - 1] = '}';
        handler_string_dup_n(ret, output, size);
        free(output);
        handler_string_t line;
        handler_string_set(&line, "handled a task");
        sfn_activity_host_log(SFN_ACTIVITY_HOST_LOG_LEVEL_INFO, &line);
    } else {
        handler_string_dup(&err->error, "Greeting.InvalidInput");
        handler_string_dup(&err->cause, "the input is empty");
    }
    handler_string_free(input);
    handler_task_context_free(context);
    return ok;
}
