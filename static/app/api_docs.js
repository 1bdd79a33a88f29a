"use strict";
// Swagger UI for /api/docs/, started from a file rather than drf-spectacular's inline script so the
// page keeps the strict Content-Security-Policy. Writes send the session's CSRF token.
(() => {
  const root = document.getElementById("swagger-ui");
  const { schemaUrl, csrfHeader, csrfToken } = root.dataset;
  window.ui = SwaggerUIBundle({
    url: schemaUrl,
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    requestInterceptor: (request) => {
      if (!["GET", "HEAD", undefined].includes(request.method)) request.headers[csrfHeader] = csrfToken;
      return request;
    },
  });
})();
