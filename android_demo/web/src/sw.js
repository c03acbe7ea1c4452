// Installs the page for offline start (home screen): the app's own files only; the bundle lives in
// IndexedDB, and the API is never cached.
const CACHE = "fedyolo-app-v1";
const FILES = ["./", "index.html", "style.css", "main.js", "client.js", "api.js", "store.js", "sha256.js", "safetensors.js",
  "tokenizer.js", "trainer.js", "manifest.webmanifest", "icon.svg"];

self.addEventListener("install", (e) => e.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES))));
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (url.pathname.includes("/v1/") || e.request.method !== "GET") return;
  e.respondWith(fetch(e.request).catch(() => caches.match(e.request)));
});
