// The project's web chat page: talks to Rasa's socket.io channel (agent/socketio_channel.py) on the
// same origin: `bot_uttered` brings each reply's text, `bot_why` the details of the reply before it. The session id lives in localStorage, so a reload keeps the conversation; the page
// shows it again from GET history/<session id>.
(function () {
  "use strict";

  var STORAGE_KEY = "empathy-chat.session";
  var REPLY_TIMEOUT_MS = 120000;
  var CM_NAMES = { ER: "emotional reaction", IP: "interpretation", EX: "exploration" };

  var log = document.getElementById("log");
  var statusLine = document.getElementById("status");
  var typing = document.getElementById("typing");
  var form = document.getElementById("composer");
  var input = document.getElementById("message");
  var sendButton = document.getElementById("send");
  var newButton = document.getElementById("new-conversation");

  var sessionId = null;
  var ready = false;
  var waiting = 0;
  var waitTimer = null;
  var greetOnConfirm = false;

  function newSessionId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function storedSessionId() {
    try { return window.localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }

  function storeSessionId(id) {
    try { window.localStorage.setItem(STORAGE_KEY, id); } catch (e) { /* private mode: this tab only */ }
  }

  function setStatus(text, isError) {
    statusLine.textContent = text || "";
    statusLine.classList.toggle("error", !!isError);
  }

  function setReady(value) {
    ready = value;
    input.disabled = !value;
    sendButton.disabled = !value;
    newButton.disabled = !value;
  }

  // --- waiting for a reply: the typing indicator ----------------------------------------------
  function startWaiting() {
    waiting += 1;
    typing.hidden = false;
    clearTimeout(waitTimer);
    waitTimer = setTimeout(function () {
      waiting = 0;
      typing.hidden = true;
      setStatus("No reply yet: the assistant may be busy. Please try again in a moment.", true);
    }, REPLY_TIMEOUT_MS);
  }

  function stopWaiting() {
    waiting = Math.max(0, waiting - 1);
    if (waiting === 0) {
      typing.hidden = true;
      clearTimeout(waitTimer);
    }
  }

  // --- rendering ------------------------------------------------------------------------------
  var LINK = /(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]|\b(?:www\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|uk|ie|ca|us|eu|info)\b(?:\/[^\s<>()]*[^\s<>().,;:!?'"])?)/gi;
  var PHONE = /\b(?:\d{3} \d{3}(?: \d{3,4})?|\d{3})\b/g;

  function appendLinked(parent, text, withPhones) {
    // Builds text nodes and <a> elements (never innerHTML): links for web addresses, and in the
    // scripted crisis texts tel: links for the helpline numbers.
    var pattern = withPhones ? new RegExp(LINK.source + "|" + PHONE.source, "gi") : new RegExp(LINK.source, "gi");
    var last = 0;
    var match;
    while ((match = pattern.exec(text)) !== null) {
      if (match.index > last) parent.appendChild(document.createTextNode(text.slice(last, match.index)));
      var found = match[0];
      var a = document.createElement("a");
      a.textContent = found;
      if (/^\d/.test(found)) {
        a.href = "tel:" + found.replace(/\s+/g, "");
      } else {
        a.href = /^https?:\/\//i.test(found) ? found : "https://" + found;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
      }
      parent.appendChild(a);
      last = match.index + found.length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function isCrisisText(why) {
    if (!why) return false;
    return !!why.crisis || /^utter_crisis_/.test(why.response || "") || /^crisis-/.test(why.generator || "");
  }

  function whyDetails(why) {
    var details = document.createElement("details");
    details.className = "why";
    var summary = document.createElement("summary");
    summary.textContent = "why?";
    summary.setAttribute("aria-label", "Why this reply?");
    details.appendChild(summary);
    var dl = document.createElement("dl");
    function row(term, value) {
      if (!value) return;
      var dt = document.createElement("dt");
      dt.textContent = term;
      var dd = document.createElement("dd");
      dd.textContent = value;
      dl.appendChild(dt);
      dl.appendChild(dd);
    }
    var emotions = (why.emotion || []).map(function (e) {
      return e.label + " " + Math.round((e.prob || 0) * 100) + "%";
    }).join(", ");
    row("Feeling I heard", emotions ? emotions + (why.polarity ? " (" + why.polarity + ")" : "") : "");
    row("Because of", (why.causes || []).map(function (c) { return "“" + c + "”"; }).join("; "));
    row("How I answered", (why.cm || []).map(function (c) { return CM_NAMES[c] || c; }).join(", "));
    if (why.crisis) row("Safety", "your message sounded like you may be in danger, so this is a fixed safety text");
    row("Reply", [why.response, why.generator].filter(Boolean).join(" · "));
    if (!dl.children.length) row("Details", "none for this reply");
    details.appendChild(dl);
    return details;
  }

  function attachWhy(li, why) {
    // The reply's details (they come in their own `bot_why` event, or with the history).
    if (!why || li.querySelector("details.why")) return;
    var body = li.querySelector(".text");
    if (isCrisisText(why)) {
      li.classList.add("crisis");
      var text = body.textContent;
      body.textContent = "";
      appendLinked(body, text, true); // helpline numbers become tel: links
    }
    li.appendChild(whyDetails(why));
  }

  function addMessage(role, text, why) {
    var li = document.createElement("li");
    li.className = "msg " + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You said: " : "Assistant: ";
    li.appendChild(who);
    var body = document.createElement("span");
    body.className = "text";
    appendLinked(body, text, false);
    li.appendChild(body);
    if (role === "bot") attachWhy(li, why);
    log.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  // --- history (kept across reloads) ------------------------------------------------------------
  function loadHistory(id) {
    return fetch("history/" + encodeURIComponent(id), { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : { messages: [] }; })
      .then(function (data) { return data.messages || []; })
      .catch(function () { return []; });
  }

  function showHistory(messages) {
    log.textContent = "";
    messages.forEach(function (m) { addMessage(m.role, m.text, m.why); });
  }

  // --- socket.io ------------------------------------------------------------------------------
  var socket = io({ path: "/socket.io", transports: ["websocket", "polling"], autoConnect: false });

  function requestSession() {
    setReady(false);
    socket.emit("session_request", { session_id: sessionId });
  }

  function send(text) {
    socket.emit("user_uttered", { session_id: sessionId, message: text });
    startWaiting();
  }

  socket.on("connect", function () {
    setStatus("Connected.");
    requestSession();
  });

  socket.on("session_confirm", function (confirmed) {
    var id = typeof confirmed === "string" ? confirmed : (confirmed && confirmed.session_id);
    if (id && id !== sessionId) {
      sessionId = id;
      storeSessionId(id);
    }
    setReady(true);
    setStatus("");
    if (greetOnConfirm) {
      greetOnConfirm = false;
      send("/greet");
    }
    input.focus();
  });

  socket.on("bot_uttered", function (message) {
    stopWaiting();
    if (message && message.text) addMessage("bot", message.text);
  });

  socket.on("bot_why", function (why) {
    var bots = log.querySelectorAll("li.msg.bot");
    if (bots.length) attachWhy(bots[bots.length - 1], why);
  });

  socket.on("disconnect", function () {
    setReady(false);
    setStatus("Connection lost: reconnecting…", true);
  });

  socket.on("connect_error", function () {
    setReady(false);
    setStatus("Cannot reach the assistant right now: retrying…", true);
  });

  // --- user actions ----------------------------------------------------------------------------
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || !ready) return;
    addMessage("user", text);
    input.value = "";
    send(text);
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });

  newButton.addEventListener("click", function () {
    sessionId = newSessionId();
    storeSessionId(sessionId);
    log.textContent = "";
    waiting = 0;
    typing.hidden = true;
    greetOnConfirm = true;
    requestSession();
  });

  // --- start: the stored session (history shown) or a new one that opens with a greeting ----------
  sessionId = storedSessionId();
  var start;
  if (sessionId) {
    start = loadHistory(sessionId).then(function (messages) {
      showHistory(messages);
      greetOnConfirm = messages.length === 0;
    });
  } else {
    sessionId = newSessionId();
    storeSessionId(sessionId);
    greetOnConfirm = true;
    start = Promise.resolve();
  }
  setReady(false);
  start.then(function () { socket.connect(); });
})();
