// {{name}}: a sfn-wasm-worker task handler in JavaScript (see README.md).
import { handler, TaskError } from "./sfn-activity.js";

export const handle = handler(async (task, ctx) => {
  const name = task?.name;
  if (typeof name !== "string" || name === "") {
    throw new TaskError("Greeting.InvalidInput", "`name` must be a non-empty string");
  }
  ctx.log("info", `greeting ${name}`);
  return { greeting: `hello, ${name}`, task_id: ctx.taskId };
});
