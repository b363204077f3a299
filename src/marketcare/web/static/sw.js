/* marketcare service worker: keeps the app shell and the manager's pages for a day.
 *
 * Hand-written rather than Workbox: three rules (static files from the cache, pages
 * from the network with the last copy as a fallback, everything else untouched) fit in
 * this file, and Workbox without a build step would mean vendoring a dozen modules.
 * Submissions are never handled here: the page keeps them in IndexedDB and sends them
 * (static/app.js), so a write is never replayed behind the manager's back.
 */
"use strict";

var VERSION = "mc-3";
var SHELL = "mc-shell-" + VERSION;
var PAGES = "mc-pages"; // not versioned: a new app version keeps the day's pages
var KEEP_MS = 24 * 60 * 60 * 1000; // a page copy is served offline for 24 hours
var NETWORK_WAIT_MS = 4000; // then the copy is shown while the network answers
var SHELL_FILES = [
  "/static/app.css",
  "/static/app.js",
  "/static/vendor/idb-8.0.4/idb.umd.js",
  "/static/icon-192.png",
  "/manifest.webmanifest",
  "/offline",
];

self.addEventListener("install", function (event) {
  event.waitUntil(
    caches.open(SHELL).then(function (cache) {
      return cache.addAll(SHELL_FILES);
    }).then(function () { return self.skipWaiting(); })
  );
});

self.addEventListener("activate", function (event) {
  event.waitUntil(
    caches.keys().then(function (names) {
      return Promise.all(names.filter(function (n) {
        return n.indexOf("mc-shell-") === 0 && n !== SHELL;
      }).map(function (n) { return caches.delete(n); }));
    }).then(function () { return self.clients.claim(); })
  );
});

/** Pages kept for offline use: the board, a checklist, history and problems; the
 * officer's list of markets and a market's scoring sheet (back rooms have no network). */
function keptPage(path) {
  return path === "/" || /^\/m\/[^/]+(\/(history|problems))?$/.test(path) || /^\/o\/\d+$/.test(path) ||
    /^\/inspect(\/[^/]+)?$/.test(path);
}

function stamped(response) {
  // a copy with the time it was kept (a navigation cannot be answered by a redirected
  // response, so the copy is a new response with the same body)
  return response.blob().then(function (body) {
    var headers = new Headers(response.headers);
    headers.set("x-mc-kept-at", String(Date.now()));
    return new Response(body, { status: response.status, statusText: response.statusText, headers: headers });
  });
}

function fresh(response) {
  var kept = Number(response.headers.get("x-mc-kept-at") || 0);
  return Date.now() - kept < KEEP_MS;
}

function fromCache(request, path) {
  return caches.open(PAGES).then(function (cache) {
    return cache.match(path).then(function (found) {
      if (found && fresh(found)) { return found; }
      if (found) { cache.delete(path); }
      return null;
    });
  });
}

function keep(path, response) {
  return stamped(response).then(function (copy) {
    return caches.open(PAGES).then(function (cache) {
      var puts = [cache.put(path, copy.clone())];
      // the app starts at "/", which redirects to the board: offline, "/" is the last board
      if (/^\/m\/[^/]+$/.test(path)) { puts.push(cache.put("/", copy.clone())); }
      return Promise.all(puts).then(function () { return copy; });
    });
  });
}

function page(event, url) {
  var path = url.pathname;
  var network = fetch(event.request).then(function (response) {
    if (response.ok && response.type === "basic" && !response.redirected && path !== "/") {
      return keep(path, response.clone()).then(function () { return response; });
    }
    return response; // a redirect, the sign-in page, an error: never kept over a good copy
  });
  event.waitUntil(network.catch(function () { return null; }));
  var timer;
  var slow = new Promise(function (resolve) {
    timer = setTimeout(function () { resolve(null); }, NETWORK_WAIT_MS);
  });
  var offline = function () {
    return fromCache(event.request, path).then(function (copy) {
      if (copy) { return copy; }
      return caches.match("/offline").then(function (fallback) {
        return fallback || new Response("offline", { status: 503, headers: { "Content-Type": "text/plain" } });
      });
    });
  };
  return Promise.race([network.catch(function () { return null; }), slow]).then(function (first) {
    clearTimeout(timer);
    if (first) { delete servedCopies[path]; return first; }
    // no answer yet (or no network): the kept copy if there is one, else keep waiting
    return fromCache(event.request, path).then(function (copy) {
      if (copy) { servedCopies[path] = Date.now(); return copy; }
      return network.catch(offline);
    });
  });
}

/** The pages answered from a copy (a slow or no network), by path: the page asks, and
 * says so ("this is the copy kept at 19:00"), also while the phone thinks it is online. */
var servedCopies = {};

self.addEventListener("fetch", function (event) {
  var request = event.request;
  if (request.method !== "GET") { return; }
  var url = new URL(request.url);
  if (url.origin !== self.location.origin) { return; }
  if (url.pathname.indexOf("/static/") === 0) {
    // stale-while-revalidate: the kept file at once, a newer one for the next visit
    var update = fetch(request).then(function (response) {
      if (response.ok) {
        var copy = response.clone();
        return caches.open(SHELL).then(function (cache) { return cache.put(request, copy); })
          .then(function () { return response; });
      }
      return response;
    });
    event.waitUntil(update.catch(function () { return null; }));
    event.respondWith(
      caches.match(request).then(function (hit) { return hit || update; })
    );
    return;
  }
  if (url.pathname === "/manifest.webmanifest") {
    event.respondWith(fetch(request).catch(function () { return caches.match(request); }));
    return;
  }
  if (keptPage(url.pathname) && !url.search) {
    event.respondWith(page(event, url));
    return;
  }
  if (request.mode === "navigate") {
    // any other page: offline, the app's own page saying so, never the browser's error
    event.respondWith(fetch(request).catch(function () {
      return caches.match("/offline").then(function (fallback) { return fallback || Response.error(); });
    }));
  }
});

self.addEventListener("message", function (event) {
  // the page asks to forget the kept pages (another user signed in, or signed out)
  if (event.data && event.data.type === "forget-pages") {
    event.waitUntil(caches.delete(PAGES));
  }
  // the page asks whether it is a kept copy (served in the last 30 s)
  if (event.data && event.data.type === "copy?" && event.source) {
    var at = servedCopies[event.data.path];
    event.source.postMessage({ type: "copy", path: event.data.path, copy: Boolean(at && Date.now() - at < 30000) });
  }
});
