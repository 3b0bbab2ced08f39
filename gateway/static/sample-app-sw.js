// pushline sample app: the service worker that holds the page's Web Push subscription and
// shows what a push brings (docs/providers.md, Web Push). Pushes are the fall-back when the
// page is not connected; while it is, messages come over the live connection instead.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch (_) {
    data = { body: event.data ? event.data.text() : "" };
  }
  const notification = data.notification || data;
  const title = typeof notification.title === "string" ? notification.title : "pushline";
  const body = typeof notification.body === "string" ? notification.body : "";
  event.waitUntil(self.registration.showNotification(title, { body }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: "window" }).then((windows) => {
      if (windows.length > 0) return windows[0].focus();
      return self.clients.openWindow("/sample-app");
    }),
  );
});
