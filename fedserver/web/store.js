// What the page keeps between visits, in IndexedDB (also open to http:// pages, unlike the Cache API):
// bundle files by sha256 (downloaded once, checked on arrival), and the update waiting to be sent.

const DB = "fedyolo";
let opened;

function db() {
  opened ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => {
      req.result.createObjectStore("files");
      req.result.createObjectStore("pending");
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return opened;
}

async function op(store, mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, mode);
    const req = fn(tx.objectStore(store));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

export const getFile = (sha) => op("files", "readonly", (s) => s.get(sha));
export const putFile = (sha, bytes) => op("files", "readwrite", (s) => s.put(bytes, sha));
export const getPending = (task) => op("pending", "readonly", (s) => s.get(task));
export const putPending = (task, pending) => op("pending", "readwrite", (s) => s.put(pending, task));
export const dropPending = (task) => op("pending", "readwrite", (s) => s.delete(task));
