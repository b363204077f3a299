// Starts Swagger UI on /api/docs. A file, not an inline script, so the page keeps the
// app's Content-Security-Policy (script-src 'self').
"use strict";
window.addEventListener("load", function () {
  window.ui = window.SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
