// marketcare on the manager's phone. Progressive enhancement only: every page and form
// works without this file (plain form posts). With it:
//  - a reading out of range turns red while typing, and is recorded only after the
//    manager confirms it ("record as failed, or correct it?");
//  - a checklist is kept on the phone (IndexedDB, through idb) with the phone's time and
//    a one-time token, then sent in order, each exactly once, by the JSON API; so a
//    checklist recorded without a network is not lost, and the board never reloads;
//  - a task with nothing to enter is ticked from the board with one tap and 5 s to undo;
//  - after a submit the next open task of the same kind opens;
//  - the page says what happened to each queued submission, and keeps the queue when the
//    sign-in has expired ("sign in again, then it is sent").
(function () {
  "use strict";

  var UNDO_MS = 5000;
  var PHOTO_EDGE = 1600; // px, the long edge a photo is shrunk to before it is kept
  var LOG_KEEP_MS = 24 * 60 * 60 * 1000;
  var words = {};
  var user = null;
  var dbPromise = null;
  var flushing = false;
  var again = false; // a send asked for while a round was running: run another after it
  var retryTimer = null;
  var failures = 0;
  var csrf = null;

  // ------------------------------------------------------------ small helpers

  function say(key, vars) {
    var text = words[key] || key;
    Object.keys(vars || {}).forEach(function (k) {
      text = text.split("{" + k + "}").join(String(vars[k]));
    });
    return text;
  }

  function meta(name) {
    var el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") : null;
  }

  function hhmm(iso) {
    // a time of day in the market's zone (the page says which), as the board shows times
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return String(iso || ""); }
    try {
      return d.toLocaleTimeString("en-GB", {
        hour: "2-digit", minute: "2-digit", hour12: false, timeZone: meta("mc-zone") || undefined,
      });
    } catch (e) {
      return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
    }
  }

  function newToken() {
    var bytes = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function number(raw) {
    // full-width digits and a decimal comma, as a Chinese keyboard may type them
    var text = String(raw).replace(/[\uff10-\uff19]/g, function (c) {
      return String.fromCharCode(c.charCodeAt(0) - 0xfee0);
    }).replace(/[\uff0c,\uff0e\u3002]/g, ".").trim();
    if (text === "" || !/^[-+]?(\d+\.?\d*|\.\d+)$/.test(text)) { return NaN; }
    return Number(text);
  }

  function outOfRange(input) {
    var v = number(input.value);
    var lo = input.dataset.min === undefined ? -Infinity : Number(input.dataset.min);
    var hi = input.dataset.max === undefined ? Infinity : Number(input.dataset.max);
    return !isNaN(v) && (v < lo || v > hi);
  }

  // ------------------------------------------------------------ range highlighting

  function check(input) {
    var bad = input.value.trim() !== "" && (isNaN(number(input.value)) || outOfRange(input));
    input.classList.toggle("out-of-range", bad);
    input.setAttribute("aria-invalid", bad ? "true" : "false");
  }

  function watchRanges(root) {
    root.querySelectorAll("input[data-min], input[data-max]").forEach(function (input) {
      input.addEventListener("input", function () { check(input); });
      if (input.value) { check(input); }
    });
  }

  // ------------------------------------------------------------ the queue (IndexedDB)

  function db() {
    if (!dbPromise) {
      dbPromise = window.idb.openDB("marketcare", 1, {
        upgrade: function (d) {
          d.createObjectStore("queue", { keyPath: "seq", autoIncrement: true });
          d.createObjectStore("log", { keyPath: "seq" });
        },
      });
    }
    return dbPromise;
  }

  function mine(items) {
    return items.filter(function (it) { return it.user === user; });
  }

  function waiting() {
    return db().then(function (d) { return d.getAll("queue"); }).then(mine);
  }

  function logged() {
    return db().then(function (d) { return d.getAll("log"); }).then(function (items) {
      var now = Date.now();
      return mine(items).filter(function (it) { return now - it.finished < LOG_KEEP_MS; });
    });
  }

  function finish(item, kind, text) {
    return db().then(function (d) {
      var tx = d.transaction(["queue", "log"], "readwrite");
      tx.objectStore("queue").delete(item.seq);
      tx.objectStore("log").put({
        seq: item.seq, user: item.user, obligation_id: item.obligation_id, label: item.label,
        phone_at: item.phone_at, kind: kind, text: text, finished: Date.now(),
      });
      return tx.done;
    });
  }

  function held5s(item) {
    // a one-tap tick waits its 5 s to undo; a hold further ahead than that means the
    // phone's clock was put back since (set right when the network came): not held, or
    // the queue would wait for hours with nothing to tap
    var left = (item.hold_until || 0) - Date.now();
    return left > 0 && left <= UNDO_MS;
  }

  function update(item) {
    return db().then(function (d) { return d.put("queue", item); });
  }

  // ------------------------------------------------------------ what the page shows

  function showQueue() {
    var box = document.getElementById("queue");
    if (!box || !user) { return Promise.resolve(); }
    return Promise.all([waiting(), logged()]).then(function (both) {
      var queue = both[0];
      var log = both[1];
      var list = document.getElementById("queue-list");
      var text = document.getElementById("queue-text");
      var send = document.getElementById("queue-send");
      var signin = document.getElementById("queue-signin");
      var needsSignIn = queue.some(function (it) { return it.signin; });
      box.hidden = queue.length === 0 && log.length === 0;
      box.classList.toggle("signin", needsSignIn);
      if (queue.length && needsSignIn) {
        text.textContent = say("signin", { n: queue.length });
      } else if (queue.length) {
        // why the first one still waits (the round stops there): the server, or no network
        var why = queue.slice().sort(function (a, b) { return a.seq - b.seq; })[0].error;
        text.textContent = say("waiting", { n: queue.length }) + (flushing ? " · " + say("sending") : why ? " · " + why : "");
      } else {
        text.textContent = "";
      }
      var held = queue.every(held5s);
      send.hidden = !queue.length || needsSignIn || held;
      signin.hidden = !needsSignIn;
      text.parentNode.hidden = !text.textContent && send.hidden && signin.hidden;
      signin.href = "/login?next=" + encodeURIComponent(location.pathname);
      list.textContent = "";
      queue.forEach(function (it) {
        var li = document.createElement("li");
        li.className = "waiting";
        li.dataset.obligation = it.obligation_id;
        li.textContent = it.label + " · " + say("when_done", { time: hhmm(it.phone_at) }) +
          (it.photo && !it.photo_sha ? " · " + say("photo_waiting") : "") +
          (it.error ? " · " + it.error : "");
        list.appendChild(li);
      });
      log.slice().reverse().forEach(function (it) {
        var li = document.createElement("li");
        li.className = it.kind;
        li.dataset.obligation = it.obligation_id;
        li.textContent = it.label + " · " + say("when_done", { time: hhmm(it.phone_at) }) + " · " + it.text;
        list.appendChild(li);
      });
      if (log.some(function (it) { return it.kind === "bad" && Date.now() - it.finished < 60000; })) {
        document.getElementById("queue-details").open = true;
      }
      markBoard(queue, log);
    });
  }

  function markBoard(queue, log) {
    // each task the phone has sent or still holds says so on its row; the latest wins
    var states = {};
    log.slice().sort(function (a, b) { return a.seq - b.seq; }).forEach(function (it) { states[it.obligation_id] = it; });
    queue.forEach(function (it) {
      // a check kept as FAILED leaves its form open: the work is redone and recorded
      // again without waiting for the network (both are sent, in order)
      states[it.obligation_id] = it.failed_text
        ? { kind: "waiting", text: say("kept_failed", { what: it.failed_text }), redo: true }
        : { kind: "waiting", text: say("kept") };
    });
    document.querySelectorAll(".board li.task").forEach(function (li) {
      var found = states[li.dataset.id];
      if (!found || li.classList.contains("pending")) { return; }
      var settled = found.kind !== "failed" && found.kind !== "bad" && !found.redo;
      li.classList.toggle("queued", found.kind === "waiting");
      li.classList.toggle("sent-ok", found.kind !== "waiting" && settled);
      li.querySelectorAll("form button").forEach(function (b) { b.disabled = settled; });
      if (settled) {
        var details = li.querySelector("details");
        if (details) { details.open = false; }
      }
      addNote(li, found.text, found.kind);
    });
    // the checklist page: the result of what it kept, once known
    var result = document.querySelector("#result[data-seq]");
    if (result) {
      var mineLog = log.filter(function (it) { return String(it.seq) === result.dataset.seq; })[0];
      if (mineLog) {
        result.textContent = mineLog.text;
        result.className = "flash " + ({ ok: "ok", late: "warn", other: "warn" }[mineLog.kind] || "error");
        result.removeAttribute("data-seq");
        // failed or refused: the form comes back as it was filled in, to correct and send
        // again (an inspection's answers are kept: no sheet to fill in from the start)
        var form = document.querySelector("form[data-checklist], form[data-inspection]");
        if (form && (mineLog.kind === "failed" || mineLog.kind === "bad")) {
          form.hidden = false;
          form.dataset.kept = "";
          form.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
        }
      }
    }
  }

  function addNote(li, text, kind) {
    var note = li.querySelector(".sent-note");
    if (!note) {
      note = document.createElement("p");
      note.className = "sent-note muted";
      note.setAttribute("role", "status");
      li.appendChild(note);
    }
    note.textContent = text;
    note.dataset.kind = kind;
  }

  var servedCopy = false; // the service worker answered this page from its copy

  function offlineNote() {
    var note = document.getElementById("offline-note");
    if (!note) { return; }
    if (navigator.onLine && !servedCopy) { note.hidden = true; return; }
    var kept = document.querySelector(".board");
    var time = kept ? kept.dataset.rendered || "" : "";
    // online but slow (no answer in 4 s): the copy is shown, and the page says so
    note.textContent = navigator.onLine ? say("slow_copy", { time: time }) : say("offline_copy", { time: time });
    note.hidden = false;
  }

  function askIfCopy() {
    if (!navigator.serviceWorker || !navigator.serviceWorker.controller || !document.getElementById("offline-note")) { return; }
    navigator.serviceWorker.addEventListener("message", function (event) {
      if (event.data && event.data.type === "copy" && event.data.path === location.pathname) {
        servedCopy = event.data.copy;
        offlineNote();
      }
    });
    navigator.serviceWorker.controller.postMessage({ type: "copy?", path: location.pathname });
  }

  // ------------------------------------------------------------ sending, in order, once

  function freshCsrf() {
    return fetch("/offline", { credentials: "same-origin", cache: "no-store", redirect: "follow" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var m = /name="csrf-token" content="([^"]+)"/.exec(html);
        csrf = m ? m[1] : csrf;
        return csrf;
      });
  }

  function post(url, body, isForm) {
    var headers = { "X-CSRF-Token": csrf || meta("csrf-token") || "" };
    if (!isForm) { headers["Content-Type"] = "application/json"; }
    return fetch(url, {
      method: "POST", credentials: "same-origin", redirect: "manual", headers: headers,
      body: isForm ? body : JSON.stringify(body),
    }).then(function (r) {
      if (r.status === 403) {
        // a form token from a page kept offline may be stale: fetch a fresh one, once
        return freshCsrf().then(function () {
          headers["X-CSRF-Token"] = csrf || "";
          return fetch(url, {
            method: "POST", credentials: "same-origin", redirect: "manual", headers: headers,
            body: isForm ? body : JSON.stringify(body),
          });
        });
      }
      return r;
    });
  }

  function signedOut(r) {
    return r.status === 401 || r.type === "opaqueredirect" || (r.status >= 300 && r.status < 400);
  }

  function transient(r) {
    return r.status === 429 || r.status >= 500;
  }

  function later(item, r) {
    // a 5xx or 429: nothing was recorded; the row says why it still waits
    item.error = say("unavailable", { status: r.status });
    return update(item).then(function () { return "later"; });
  }

  function detail(r) {
    return r.json().then(function (j) { return j.detail || String(r.status); }, function () { return String(r.status); });
  }

  function sendPhoto(item) {
    if (!item.photo || item.photo_sha) { return Promise.resolve("ok"); }
    var form = new FormData();
    form.append("file", item.photo, item.photo_name || "photo.jpg");
    return post("/api/v1/evidence", form, true).then(function (r) {
      if (signedOut(r)) { return "signin"; }
      if (transient(r)) { return later(item, r); }
      if (r.ok) {
        return r.json().then(function (j) { item.photo_sha = j.sha256; return update(item).then(function () { return "ok"; }); });
      }
      // a photo the server refuses (too large, not a photo) does not hold the record back
      return detail(r).then(function (why) {
        item.photo = null;
        item.photo_refused = why;
        return update(item).then(function () { return "ok"; });
      });
    });
  }

  function outcomeText(j, item) {
    var parts = [];
    if (!j.changed) {
      if (j.done_by_name || j.done_by) {
        return ["other", say("done_by_other", { name: j.done_by_name || j.done_by, time: hhmm(j.done_at) })];
      }
      if (!j.completion_id) { return ["other", j.message]; }
      // the same submission sent again (the answer to the first send was lost): it was
      // recorded then; say what it recorded, so a FAILED check is not shown as done
      if (j.state !== "failed" && j.state !== "late") { return ["ok", say("same")]; }
      parts.push(say("same"));
    }
    var kind = "ok";
    if (j.state === "failed") {
      kind = "failed";
      parts.push(say("sent_failed"));
      if (item.failed_text) { parts.push(item.failed_text); }
    } else if (j.state === "late") {
      kind = "late";
      parts.push(say("sent_late"));
    } else { parts.push(say("sent_ok")); }
    if (j.phone_at && item.waited) {  // only a submission that waited on the phone
      parts.push(j.time_basis === "phone"
        ? say("sent_phone_time", { phone: hhmm(j.phone_at), arrived: hhmm(j.arrived_at) })
        : say("sent_arrival_time", { phone: hhmm(j.phone_at), arrived: hhmm(j.arrived_at) }));
    }
    if (item.photo_refused) { parts.push(item.photo_refused); }
    return [kind, parts.join(" ")];
  }

  // ------------------------------------------------------------ an officer's inspection

  function sendInspectionPhotos(item) {
    // one request per photo (OFFLINE.md), each remembered by its SHA-256 once sent
    var chain = Promise.resolve("ok");
    (item.photos || []).forEach(function (p) {
      chain = chain.then(function (so_far) {
        if (so_far !== "ok" || p.sha || !p.blob) { return so_far; }
        var form = new FormData();
        form.append("file", p.blob, p.name || "photo.jpg");
        return post("/api/v1/evidence", form, true).then(function (r) {
          if (signedOut(r)) { return "signin"; }
          if (transient(r)) { return later(item, r); }
          if (r.ok) {
            return r.json().then(function (j) { p.sha = j.sha256; p.blob = null; return update(item).then(function () { return "ok"; }); });
          }
          return detail(r).then(function (why) {
            p.blob = null;
            item.photo_refused = why;
            return update(item).then(function () { return "ok"; });
          });
        });
      });
    });
    return chain;
  }

  function sendInspection(item) {
    return sendInspectionPhotos(item).then(function (photo) {
      if (photo !== "ok") { return photo; }
      var photos = {};
      (item.photos || []).forEach(function (p) {
        if (p.sha) { (photos[p.item] = photos[p.item] || []).push(p.sha); }
      });
      var body = {
        template: item.template, token: item.token, outcomes: item.outcomes, notes: item.notes,
        photos: photos, note: item.note || null,
      };
      return post("/api/v1/markets/" + encodeURIComponent(item.market) + "/inspections", body, false).then(function (r) {
        if (signedOut(r)) { return "signin"; }
        if (transient(r)) { return later(item, r); }
        if (r.ok) {
          return r.json().then(function (j) {
            var score = j.score === null || j.score === undefined ? "—" : Number(j.score).toFixed(1);
            var text = j.created ? say("inspection_sent", { score: score, problems: j.problems.length }) : say("same");
            return finish(item, "ok", text).then(function () {
              // still on the sheet that was kept: open the inspection just recorded
              var kept = document.querySelector("form[data-inspection][data-market=\"" + item.market + "\"][hidden]");
              if (kept) { window.location.href = "/i/" + j.inspection_id; }
              return "done";
            });
          });
        }
        return detail(r).then(function (why) {
          var reason = item.photo_refused ? why + " (" + item.photo_refused + ")" : why;
          return finish(item, "bad", say("refused", { reason: reason })).then(function () { return "done"; });
        });
      });
    });
  }

  function inspectionEntry(form) {
    var data = new FormData(form);
    var outcomes = {};
    var notes = {};
    var files = [];
    data.forEach(function (value, key) {
      if (key.indexOf("item.") === 0) { outcomes[key.slice(5)] = String(value); }
      if (key.indexOf("note.") === 0 && String(value).trim()) { notes[key.slice(5)] = String(value).trim(); }
      if (key.indexOf("photo.") === 0 && value && value.size) { files.push([key.slice(6), value]); }
    });
    var kept = files.filter(function (f) { return outcomes[f[0]] === "fail"; });
    return Promise.all(kept.map(function (f) { return shrink(f[1]); })).then(function (small) {
      return {
        user: user,
        kind: "inspection",
        market: form.dataset.market,
        template: form.dataset.template,
        label: form.dataset.label,
        token: "web:" + newToken(),
        outcomes: outcomes,
        notes: notes,
        note: String(data.get("note") || "").trim(),
        photos: kept.map(function (f, i) { return { item: f[0], blob: small[i], name: f[1].name || "photo.jpg" }; }),
        phone_at: new Date().toISOString(),
        hold_until: 0,
      };
    });
  }

  function inspectionComplete(form) {
    // every item answered; a failure that needs a photo has one (the server checks again)
    form.querySelectorAll(".item[data-item]").forEach(function (block) {
      var radios = block.querySelectorAll("input[type=radio]");
      radios.forEach(function (r) { r.required = true; });
      var file = block.querySelector("input[type=file]");
      var failed = block.querySelector("input.fail:checked");
      if (file) {
        file.setCustomValidity(failed && block.dataset.photo === "1" && !(file.files && file.files.length) ? (words.photo_needed || "📷") : "");
      }
    });
    if (!form.checkValidity()) { form.reportValidity(); return false; }
    return true;
  }

  function submitInspection(form) {
    if (form.dataset.kept === "1" || !inspectionComplete(form)) { return; }
    form.dataset.kept = "1";  // a double tap keeps one inspection
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    inspectionEntry(form).then(function (entry) {
      var big = entry.photos.filter(function (ph) {
        return tooLarge(form.querySelector('input[type=file][name="photo.' + ph.item + '"]'), ph.blob);
      });
      if (big.length) {
        form.dataset.kept = "";
        buttons.forEach(function (b) { b.disabled = false; });
        return "too large";
      }
      return keep(entry);
    }).then(function (seq) {
      if (seq === "too large") { return seq; }
      var p = document.createElement("p");
      p.className = "flash ok";
      p.id = "result";
      p.dataset.seq = String(seq);  // the refusal, if it comes, replaces this (markBoard)
      var old = document.getElementById("result");
      if (old) { old.remove(); }
      p.setAttribute("role", "alert");
      p.textContent = say("kept");
      form.parentNode.insertBefore(p, form);
      form.hidden = true;
      return showQueue();
    }).then(function (kept) { if (kept !== "too large") { flush(); } }, function () {
      buttons.forEach(function (b) { b.disabled = false; });
      form.dataset.plain = "1";
      form.submit();
    });
  }

  function sendOne(item) {
    if (item.kind === "inspection") { return sendInspection(item); }
    return sendPhoto(item).then(function (photo) {
      if (photo !== "ok") { return photo; }
      var sentAt = new Date();
      item.waited = sentAt.getTime() - new Date(item.phone_at).getTime() > 60000;
      var body = {
        token: item.token, items: item.items, readings: item.readings, texts: item.texts,
        note: item.note || null, photos: item.photo_sha ? [item.photo_sha] : [],
        phone_at: item.phone_at, phone_sent_at: sentAt.toISOString(),
      };
      return post("/api/v1/obligations/" + item.obligation_id + "/completions", body, false).then(function (r) {
        if (signedOut(r)) { return "signin"; }
        if (transient(r)) { return later(item, r); }
        if (r.ok) {
          return r.json().then(function (j) {
            var said = outcomeText(j, item);
            return finish(item, said[0], said[1]).then(function () { return "done"; });
          });
        }
        // refused for good (excused, withdrawn, not yours any more): shown, never blocking
        return detail(r).then(function (why) {
          var text = r.status === 404 ? say("gone") : say("refused", { reason: why });
          return finish(item, "bad", text).then(function () { return "done"; });
        });
      });
    });
  }

  function flush() {
    if (!user) { return Promise.resolve(); }
    if (flushing) {
      // the round running now read the queue before this was kept (a slow answer):
      // it runs again when it ends, so nothing waits for the next "online" or a tap
      again = true;
      return Promise.resolve();
    }
    flushing = true;
    again = false;
    clearTimeout(retryTimer);
    var stop = null;
    return waiting().then(function (queue) {
      queue.sort(function (a, b) { return a.seq - b.seq; });
      // this page was served to a signed-in user: a sign-in asked for earlier is done
      return Promise.all(queue.filter(function (q) { return q.signin; }).map(function (q) {
        q.signin = false;
        return update(q);
      })).then(function () { return queue; });
    }).then(function (queue) {
      var chain = Promise.resolve();
      queue.forEach(function (item) {
        chain = chain.then(function () {
          if (stop) { return; }
          if (held5s(item)) {
            stop = "hold";
            retryTimer = setTimeout(flush, item.hold_until - Date.now() + 50);
            return;
          }
          return sendOne(item).then(function (result) {
            if (result === "signin") {
              stop = "signin";
              return Promise.all(queue.map(function (q) { q.signin = true; return update(q); }));
            }
            if (result === "later") { stop = "later"; }
            if (result === "done") { failures = 0; }
            return showQueue();
          }, function () {
            // no answer at all: the phone has no network, or the server is down
            stop = "later";
            item.error = say(navigator.onLine ? "unreachable" : "no_network");
            return update(item);
          });
        });
      });
      return chain;
    }).then(function () {
      flushing = false;
      if (again && stop !== "signin" && stop !== "hold") { return flush(); }
      if (stop === "later") {
        failures += 1;
        retryTimer = setTimeout(flush, Math.min(60000, 2000 * Math.pow(2, failures)));
      }
      offlineNote();
      return showQueue();
    }, function () { flushing = false; });
  }

  // ------------------------------------------------------------ keeping a submission

  function shrink(file) {
    if (!file || !file.size) { return Promise.resolve(null); }
    if (!window.createImageBitmap || !/^image\/(jpeg|png|webp)$/.test(file.type)) {
      return Promise.resolve(file); // HEIC, PDF: kept as they are
    }
    return createImageBitmap(file).then(function (bitmap) {
      var scale = Math.min(1, PHOTO_EDGE / Math.max(bitmap.width, bitmap.height));
      if (scale === 1 && file.type === "image/jpeg") { return file; }
      var canvas = document.createElement("canvas");
      canvas.width = Math.round(bitmap.width * scale);
      canvas.height = Math.round(bitmap.height * scale);
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      return new Promise(function (resolve) {
        canvas.toBlob(function (blob) { resolve(blob || file); }, "image/jpeg", 0.82);
      });
    }, function () { return file; });
  }

  function entryOf(form, holdMs) {
    var data = new FormData(form);
    var readings = {};
    var texts = {};
    data.forEach(function (value, key) {
      if (key.indexOf("reading_") === 0) { readings[key.slice(8)] = number(value); }
      if (key.indexOf("text_") === 0 && String(value).trim()) { texts[key.slice(5)] = String(value).trim(); }
    });
    var li = form.closest("li.task");
    var id = Number(form.getAttribute("action").split("/").pop());
    var photo = data.get("photo");
    var failed = Array.prototype.filter.call(form.querySelectorAll("input[name^=reading_]"), outOfRange)
      .map(function (input) {
        var label = form.querySelector('label[for="' + input.id + '"]');
        var name = label ? label.firstChild.textContent.trim() : input.name.slice(8);
        return name + " " + number(input.value) + " ∉ " + (input.dataset.range || "");
      }).join("; ");
    return shrink(photo && photo.size ? photo : null).then(function (small) {
      return {
        user: user,
        obligation_id: id,
        label: li ? li.dataset.label : document.title.replace(/ · marketcare$/, ""),
        token: "web:" + newToken(),
        items: data.getAll("item").map(String),
        readings: readings,
        texts: texts,
        note: String(data.get("note") || "").trim(),
        photo: small,
        photo_name: photo && photo.name ? photo.name : null,
        phone_at: new Date().toISOString(),
        hold_until: holdMs ? Date.now() + holdMs : 0,
        failed_text: failed,
      };
    });
  }

  function keep(entry) {
    return db().then(function (d) { return d.add("queue", entry); });
  }

  function tooLarge(input, blob) {
    // a photo the server would refuse for its size (a HEIC or a PDF is not shrunk): said
    // now, on its field, while it can be taken again, not after the queue has sent it
    var max = Number(meta("mc-upload-max") || 0);
    if (!input || !blob || !max || blob.size <= max) { return false; }
    input.setCustomValidity(say("photo_too_large", { limit: String(Math.round(max / 1e5) / 10) }));
    input.reportValidity();
    if (!input.dataset.sizeWatched) {
      input.dataset.sizeWatched = "1";
      input.addEventListener("change", function () { input.setCustomValidity(""); });
    }
    return true;
  }

  // ------------------------------------------------------------ confirmation and checks

  function complete(form) {
    // the browser's own messages for a box not ticked or a field left empty
    var ok = true;
    form.querySelectorAll("input[type=checkbox][name=item]").forEach(function (box) {
      box.required = true;
    });
    form.querySelectorAll("input[name^=reading_]").forEach(function (input) {
      input.required = true;
      input.setCustomValidity(input.value.trim() !== "" && isNaN(number(input.value)) ? (words.nan || "0-9") : "");
    });
    if (!form.checkValidity()) { form.reportValidity(); ok = false; }
    return ok;
  }

  function confirmBox(form, inputs) {
    var old = form.querySelector(".confirm.js");
    if (old) { old.remove(); }
    var box = document.createElement("div");
    box.className = "confirm js";
    box.setAttribute("role", "alert");
    inputs.forEach(function (input) {
      var p = document.createElement("p");
      p.textContent = say("confirm", { value: String(number(input.value)), range: input.dataset.range || "" });
      box.appendChild(p);
    });
    var actions = document.createElement("div");
    actions.className = "actions";
    var failed = document.createElement("button");
    failed.type = "button";
    failed.className = "danger";
    failed.textContent = say("record_failed");
    var fix = document.createElement("button");
    fix.type = "button";
    fix.textContent = say("correct");
    actions.appendChild(failed);
    actions.appendChild(fix);
    box.appendChild(actions);
    var button = form.querySelector("button.primary");
    form.insertBefore(box, button);
    failed.addEventListener("click", function () {
      form.dataset.confirmed = "1";
      box.remove();
      submitChecklist(form);
    });
    fix.addEventListener("click", function () {
      box.remove();
      inputs[0].focus();
      inputs[0].select();
    });
    failed.focus();
  }

  // ------------------------------------------------------------ the next task

  function nextTask(li) {
    if (!li) { return null; }
    var best = null;
    document.querySelectorAll('.board [data-section="overdue"] li.task, .board [data-section="open"] li.task').forEach(function (other) {
      if (other === li || other.dataset.kind !== li.dataset.kind) { return; }
      if (other.classList.contains("queued") || other.classList.contains("sent-ok") || other.classList.contains("pending")) { return; }
      if (!other.querySelector("form")) { return; }
      var rank = [other.dataset.task === li.dataset.task ? 0 : 1, other.dataset.due || ""];
      if (!best || rank[0] < best[0][0] || (rank[0] === best[0][0] && rank[1] < best[0][1])) { best = [rank, other]; }
    });
    return best ? best[1] : null;
  }

  function offerNext(li) {
    document.querySelectorAll(".next-offer").forEach(function (el) { el.remove(); });
    var next = nextTask(li);
    var offer = document.createElement("p");
    offer.className = "next-offer flash";
    offer.setAttribute("role", "status");
    offer.textContent = next ? say("next", { task: next.dataset.label }) : say("none_left");
    if (!next) { li.appendChild(offer); return; }
    next.insertBefore(offer, next.firstChild);
    var details = next.querySelector("details");
    if (details) { details.open = true; }
    next.scrollIntoView({ block: "start" });
  }

  // ------------------------------------------------------------ submitting

  function submitChecklist(form) {
    if (!complete(form)) { return; }
    var bad = Array.prototype.filter.call(form.querySelectorAll("input[name^=reading_]"), outOfRange);
    if (bad.length && form.dataset.confirmed !== "1") { confirmBox(form, bad); return; }
    form.dataset.confirmed = "";
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    var keptText = say("kept");
    entryOf(form, 0).then(function (entry) {
      if (entry.failed_text) { keptText = say("kept_failed", { what: entry.failed_text }); }
      if (tooLarge(form.querySelector("input[type=file][name=photo]"), entry.photo)) {
        buttons.forEach(function (b) { b.disabled = false; });
        return "too large";
      }
      return keep(entry);
    }).then(function (seq) {
      if (seq === "too large") { return seq; }
      var li = form.closest("li.task");
      if (li) {
        li.classList.add("queued");
        var details = li.querySelector("details");
        if (details) { details.open = false; }
        addNote(li, keptText, "waiting");
        offerNext(li);
      } else {
        var p = document.createElement("p");
        p.className = "flash ok";
        p.id = "result";
        p.dataset.seq = String(seq);
        var old = document.getElementById("result");
        if (old) { old.remove(); }
        p.setAttribute("role", "alert");
        p.textContent = keptText;
        form.parentNode.insertBefore(p, form);
        form.hidden = true;
      }
      return showQueue();
    }).then(function (kept) { if (kept !== "too large") { flush(); } }, function () {
      // IndexedDB unavailable (a private window): the plain form post still works
      buttons.forEach(function (b) { b.disabled = false; });
      form.dataset.plain = "1";
      form.submit();
    });
  }

  function quickTick(form) {
    var li = form.closest("li.task");
    var button = form.querySelector("button");
    button.disabled = true;
    entryOf(form, UNDO_MS).then(function (entry) {
      return keep(entry).then(function (seq) {
        li.classList.add("pending");
        var bar = document.createElement("div");
        bar.className = "undo-bar";
        bar.setAttribute("role", "status");
        var text = document.createElement("span");
        text.textContent = say("ticked", { task: li.dataset.label, s: UNDO_MS / 1000 });
        var undo = document.createElement("button");
        undo.type = "button";
        undo.textContent = say("undo");
        bar.appendChild(text);
        bar.appendChild(undo);
        li.appendChild(bar);
        var done = false;
        undo.addEventListener("click", function () {
          if (done || Date.now() >= entry.hold_until) { return; }
          done = true;
          db().then(function (d) { return d.delete("queue", seq); }).then(function () {
            bar.remove();
            li.classList.remove("pending");
            button.disabled = false;
            addNote(li, say("undone"), "other");
            return showQueue();
          });
        });
        setTimeout(function () {
          if (done) { return; }
          done = true;
          bar.remove();
          li.classList.remove("pending");
          li.classList.add("queued");
          flush();
        }, UNDO_MS);
        return showQueue().then(flush);
      });
    }, function () { form.submit(); });
  }

  function enhanceForms(root) {
    root.querySelectorAll("form[data-checklist]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (form.dataset.plain === "1") { return; }
        event.preventDefault();
        if (event.submitter && event.submitter.name === "confirm_failed") { form.dataset.confirmed = "1"; }
        submitChecklist(form);
      });
    });
    root.querySelectorAll("form[data-quick]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        quickTick(form);
      });
    });
    root.querySelectorAll("form[data-inspection]").forEach(function (form) {
      form.addEventListener("change", function () {
        // a photo chosen or an answer changed: the browser checks again at the next submit
        form.querySelectorAll("input[type=file]").forEach(function (f) { f.setCustomValidity(""); });
      });
      form.addEventListener("submit", function (event) {
        if (form.dataset.plain === "1") { return; }
        event.preventDefault();
        submitInspection(form);
      });
    });
    root.querySelectorAll("form[data-once]:not([data-checklist]):not([data-inspection])").forEach(function (form) {
      form.addEventListener("submit", function () {
        form.querySelectorAll("button[type=submit]").forEach(function (b) {
          setTimeout(function () { b.disabled = true; }, 0);
        });
      });
    });
  }

  // ------------------------------------------------------------ keeping pages for offline

  function forgetPagesOnUserChange() {
    var last = null;
    try { last = localStorage.getItem("mc-user"); } catch (e) { last = null; }
    if (user && last && last !== user && window.caches) { caches.delete("mc-pages"); }
    try { if (user) { localStorage.setItem("mc-user", user); } } catch (e) { /* private mode */ }
    var signout = document.getElementById("signout");
    if (signout && window.caches) {
      signout.addEventListener("submit", function () { caches.delete("mc-pages"); });
    }
  }

  function keepChecklists() {
    // the checklists of today's tasks not yet open, and the officer's sheets of the
    // markets planned this week, kept by the service worker
    if (!navigator.onLine || !navigator.serviceWorker || !navigator.serviceWorker.controller) { return; }
    var links = Array.prototype.map.call(
      document.querySelectorAll('.board [data-section="soon"] li.task a[href^="/o/"], .board [data-section="later"] li.task a[href^="/o/"], .board li.task .row-link, ' +
        '.inspect-markets a.row.open[data-market], .inspect-markets a.row.overdue[data-market]'),
      function (a) { return a.getAttribute("href"); });
    var i = 0;
    (function next() {
      if (i >= links.length) { return; }
      fetch(links[i++], { credentials: "same-origin" }).then(next, function () { /* offline again */ });
    })();
  }

  // ------------------------------------------------------------ start

  function start() {
    var holder = document.getElementById("mc-words");
    if (holder) {
      try { words = JSON.parse(holder.dataset.words || "{}"); } catch (e) { words = {}; }
    }
    user = meta("mc-user");
    watchRanges(document);
    var queueReady = Boolean(user && window.idb && window.indexedDB);
    if (queueReady) {
      enhanceForms(document);
      forgetPagesOnUserChange();
      showQueue().then(flush);
      window.addEventListener("online", function () { failures = 0; flush(); });
      window.addEventListener("offline", offlineNote);
      document.addEventListener("visibilitychange", function () {
        if (document.visibilityState === "visible") { flush(); }
      });
      var send = document.getElementById("queue-send");
      if (send) { send.addEventListener("click", function () { failures = 0; flush(); }); }
    } else {
      document.querySelectorAll("form[data-once]").forEach(function (form) {
        form.addEventListener("submit", function () {
          form.querySelectorAll("button[type=submit]").forEach(function (b) {
            setTimeout(function () { b.disabled = true; }, 0);
          });
        });
      });
    }
    offlineNote();
    askIfCopy();
    if ("serviceWorker" in navigator) {
      navigator.serviceWorker.register("/sw.js", { scope: "/" }).then(function () {
        if (document.readyState === "complete") { setTimeout(keepChecklists, 1500); }
        else { window.addEventListener("load", function () { setTimeout(keepChecklists, 1500); }); }
      }, function () { /* no service worker (plain http on a LAN address): no offline copy */ });
    }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
})();
