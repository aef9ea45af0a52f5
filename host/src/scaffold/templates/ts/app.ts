// {{name}}: a sfn-wasm-worker task handler in TypeScript (see README.md).
import { config, handler, TaskError, type Context } from "./sfn-activity.js";

/** The task's input. */
interface Greeting {
  name?: string;
}

export const handle = handler((task: Greeting, ctx: Context) => {
  const name = task?.name;
  if (typeof name !== "string" || name === "") {
    throw new TaskError("Greeting.InvalidInput", "`name` must be a non-empty string");
  }
  ctx.log("info", `greeting ${name}`);
  // A value of the activity's [activity.config] (or `invoke --config-value greeting=hi`).
  const greeting = config("greeting", "hello");
  return { greeting: `${greeting}, ${name}`, task_id: ctx.taskId };
});
