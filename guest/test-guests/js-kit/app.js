// Test guest for the JavaScript kit: does what the input's "do" asks, so the tests can check
// how each way a handler ends becomes the task's outcome.
import { handler, heartbeat, TaskError } from "../../kits/js/sfn-activity.js";

class OrderRejected extends Error {}

/** Allocates 1 MiB blocks until the memory limit refuses one. */
function allocateUntilRefused() {
  const blocks = [];
  for (;;) blocks.push(new Uint8Array(1 << 20).fill(1));
}

function checkSku(sku) {
  if (!sku) throw new TypeError("bad sku");
  return sku;
}

export const handle = handler(async (request, ctx) => {
  switch (request?.do) {
    case "raise":
      return checkSku("");
    case "raise-custom":
      throw new OrderRejected("customer is blocked");
    case "task-error":
      throw new TaskError("Order.Invalid", "items must be a non-empty array");
    case "throw-string":
      throw "plain text";
    case "throw-object":
      throw { error: "Legacy.Error" };
    case "undefined":
      return undefined;
    case "bigint":
      return { n: 10n };
    case "number":
      return 42;
    case "allocate": // until its memory_limit: an uncaught out-of-memory error
      return { blocks: allocateUntilRefused() };
    case "allocate-caught": // the handler turns the error into its own
      try {
        allocateUntilRefused();
      } catch {
        throw new TaskError("Order.TooLarge", "the order does not fit in memory");
      }
      return {};
    case "heartbeat":
      heartbeat();
      return { beat: true };
    case "log":
      ctx.log("info", "hello from the kit");
      return { logged: true };
    default:
      return { echo: request, task_id: ctx.taskId, activity_arn: ctx.activityArn };
  }
});
