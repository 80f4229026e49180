// A Node app using the openai SDK (global fetch), as any Node LLM client does: one JSON and one
// streamed chat call to OPENAI_BASE_URL; prints what it got as one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0 });  // OPENAI_BASE_URL and OPENAI_API_KEY from the environment
const messages = [{ role: "user", content: "hi from node" }];
const json = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
let streamed = "";
const stream = await client.chat.completions.create({ model: "gpt-4o-mini", messages, stream: true });
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
console.log(JSON.stringify({ usage: json.usage, streamed }));
