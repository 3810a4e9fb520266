// inference.js: one streamed chat or generate turn, start to finish, shared by the Chat and Generate tabs.
// Owns: sending the request (stream: true, keep_alive "30m" so the model stays loaded between turns),
// reading the NDJSON stream piece by piece, Stop (an AbortController), an error in the stream's last
// line, and recording the turn (telemetry.js: local event + beacon).

import { call, describeStatus, errorText, lines } from "./conn.js";
import { finishTurn, startTurn } from "./telemetry.js";

export const KEEP_ALIVE = "30m";

/**
 * Run one turn. `kind` is "chat" or "generate"; `body` the request without stream/keep_alive;
 * `onPiece(textSoFar, thinkingSoFar)` is called as text arrives. Resolves {text, done, event, stopped,
 * error}; never rejects (a failure is in `error`, and recorded).
 */
export async function runTurn(kind, body, { input, signal, onPiece }) {
  const path = kind === "chat" ? "/api/chat" : "/api/generate";
  const turn = startTurn(kind, body.model, input);
  let text = "";
  let thinking = "";
  let done = null;
  let error = null;
  let stopped = false;
  try {
    const result = await call(path, { method: "POST", body: { ...body, stream: true, keep_alive: KEEP_ALIVE }, signal });
    turn.headers(result);
    const { res } = result;
    if (!res.ok) {
      const raw = await res.text();
      let parsed = null;
      try { parsed = JSON.parse(raw); } catch { /* not JSON */ }
      error = describeStatus(res.status, errorText(parsed, raw || res.statusText));
    } else {
      for await (const line of lines(res)) {
        if (!line.trim()) continue;
        const obj = JSON.parse(line);
        turn.chunk();
        if (obj.error) { error = obj.error; break; }
        const piece = kind === "chat" ? obj.message?.content || "" : obj.response || "";
        const thought = kind === "chat" ? obj.message?.thinking || "" : obj.thinking || "";
        text += piece;
        thinking += thought;
        if (piece || thought) onPiece?.(text, thinking);
        if (obj.done) { done = obj; break; }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else error = e.message;
  }
  const event = finishTurn(turn, done, { ok: !error, error, stopped, output: text });
  return { text, thinking, done, event, stopped, error };
}
