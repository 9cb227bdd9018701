// Chat page script: keeps the conversation in memory, sends all of it to /v1/chat/completions with
// "stream": true, and writes the reply into the page as the server-sent events arrive.
// Model output is only ever assigned through textContent, so it can never inject markup.
"use strict";

const messageList = document.getElementById("messages");
const form = document.getElementById("composer");
const promptBox = document.getElementById("prompt");
const temperatureInput = document.getElementById("temperature");
const maxTokensInput = document.getElementById("max-tokens");
// Present only when the server requires ASTRAI_API_KEY; the key stays in this tab's session storage.
const apiKeyInput = document.getElementById("api-key");
if (apiKeyInput) apiKeyInput.value = sessionStorage.getItem("astrai-api-key") || "";
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const newChatButton = document.getElementById("new-chat");
const statusLine = document.getElementById("status");

// Messages of finished turns, in the API's {role, content} shape.
const conversation = [];
let controller = null;

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  item.append(label, content);
  messageList.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function setBusy(busy) {
  sendButton.disabled = busy;
  newChatButton.disabled = busy;
  stopButton.disabled = !busy;
}

// Yield the payload of each "data:" line of a server-sent event stream.
async function* eventData(body) {
  const reader = body.getReader();
  // stream: true keeps a multi-byte UTF-8 character (every Chinese character is three bytes)
  // intact when the network splits it across two reads.
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (line.startsWith("data:")) yield line.slice(5).trim();
      }
    }
  } finally {
    reader.releaseLock();
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error.message;
  } catch {
    return `the server answered ${response.status} ${response.statusText}`;
  }
}

async function sendTurn(text) {
  const userItem = addMessage("user", text);
  const replyItem = addMessage("assistant", "");
  const replyContent = replyItem.querySelector(".content");
  replyItem.classList.add("pending");
  const request = {
    messages: [...conversation, { role: "user", content: text }],
    stream: true,
    temperature: Number(temperatureInput.value),
    max_tokens: Number(maxTokensInput.value),
  };
  controller = new AbortController();
  setBusy(true);
  showStatus("");

  let reply = "";
  let failure = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: requestHeaders(),
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of eventData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice.delta.content) {
        reply += choice.delta.content;
        replyContent.textContent = reply;
        replyItem.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason === "length") {
        showStatus("The reply stopped at the max tokens setting or at the end of the model's context.");
      }
    }
  } catch (error) {
    failure = error;
  } finally {
    replyItem.classList.remove("pending");
    setBusy(false);
    controller = null;
  }

  const stopped = failure !== null && failure.name === "AbortError";
  if (reply) {
    // A reply cut short by Stop or by an error still joins the conversation as far as it got.
    conversation.push({ role: "user", content: text }, { role: "assistant", content: reply });
  } else {
    // Nothing came back: undo the turn and give the text back so it can be edited and resent.
    userItem.remove();
    replyItem.remove();
    promptBox.value = text;
  }
  if (stopped) showStatus("Stopped.");
  else if (failure) showStatus(`Error: ${failure.message}`, true);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = promptBox.value;
  if (!text.trim() || controller) return;
  promptBox.value = "";
  sendTurn(text);
});

promptBox.addEventListener("keydown", (event) => {
  // isComposing: Enter also confirms a character in Chinese and Japanese input methods.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => {
  if (controller) controller.abort();
});

newChatButton.addEventListener("click", () => {
  conversation.length = 0;
  messageList.replaceChildren();
  showStatus("");
  promptBox.focus();
});

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (apiKeyInput && apiKeyInput.value) {
    sessionStorage.setItem("astrai-api-key", apiKeyInput.value);
    headers.Authorization = `Bearer ${apiKeyInput.value}`;
  }
  return headers;
}
