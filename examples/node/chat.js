// Talk to the companion gRPC service from Node.js.
//
//   node chat.js [HOST:PORT] [MESSAGE] [LOCALE]
//
// Creates a session, sends one message over SendMessage, streams a second one over
// StreamMessage, and prints what came back. COMPANION_API_KEY, when set, is sent as
// `authorization: Bearer <key>`. The proto is loaded at run time from ../../proto.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.join(__dirname, "..", "..", "proto");
const definition = protoLoader.loadSync(path.join(PROTO_ROOT, "companion/v1/companion.proto"), {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the proto: session_id, turn_index
  enums: String, // "ACTION_REDIRECTED" rather than 2
  longs: String,
  defaults: true,
  oneofs: true, // StreamMessageResponse.event names the kind that is set
});
const { CompanionService } = grpc.loadPackageDefinition(definition).companion.v1;

const [target = "127.0.0.1:50051", message = "I feel anxious about my exams", locale = "en-US"] =
  process.argv.slice(2);

const client = new CompanionService(target, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.COMPANION_API_KEY) {
  metadata.set("authorization", `Bearer ${process.env.COMPANION_API_KEY}`);
}
const deadline = () => new Date(Date.now() + 120_000);

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

function stream(request) {
  return new Promise((resolve, reject) => {
    let text = "";
    let done = null;
    const events = client.StreamMessage(request, metadata, { deadline: deadline() });
    events.on("data", (event) => {
      if (event.event === "delta") text += event.delta.text;
      else if (event.event === "withheld") text = ""; // discard what was shown; done has the reply
      else if (event.event === "done") done = event.done;
      // Unknown event kinds are ignored: later versions may add some.
    });
    events.on("error", reject);
    events.on("end", () => resolve({ text, done }));
  });
}

async function main() {
  const { session_id } = await call("CreateSession", { locale });
  console.log(`session: ${session_id}`);

  const reply = await call("SendMessage", { session_id, text: message });
  const category = reply.category.replace("CATEGORY_", "").toLowerCase();
  const action = reply.action.replace("ACTION_", "").toLowerCase();
  console.log(`action: ${action} category: ${category} turn: ${reply.turn_index}`);
  console.log(`resources: ${reply.resources.map((r) => r.name).join(", ") || "-"}`);
  console.log(`reply: ${reply.text}`);

  const streamed = await stream({ session_id, text: "Thank you." });
  console.log(`streamed turn: ${streamed.done.reply.turn_index} withheld: ${streamed.done.withheld}`);

  const history = await call("GetHistory", { session_id });
  console.log(`history: ${history.turns.length} turns`);
}

main()
  .catch((err) => {
    // err.code is the gRPC status number, err.details the server's message.
    console.error(`error: ${grpc.status[err.code] ?? err.code}: ${err.details ?? err.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
