// Keyboard shortcuts for the Label page: reports an allowed key press to Python.
// Mounted in the app page itself (st.components.v2), so it listens on the whole document.
// data = {keys: ["1", "2", "3", "s", "u"], item: "<prediction id shown>"}
// A press reports the item on screen at that moment (the element with data-prediction-id), so
// Python can ignore a press aimed at an item that is no longer current.
export default function (component) {
  const { data, setTriggerValue } = component;
  const allowed = new Set((data && data.keys) || []);
  const item = data ? data.item : null;
  const previous = window.__tuneloopKeyHandler;
  if (previous) document.removeEventListener("keydown", previous, true);

  const handler = (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    const tag = target && target.tagName ? target.tagName.toLowerCase() : "";
    if (tag === "input" || tag === "textarea" || tag === "select" || (target && target.isContentEditable)) return;
    const key = event.key.toLowerCase();
    if (!allowed.has(key)) return;
    event.preventDefault();
    const shown = document.querySelector("[data-prediction-id]");
    const onScreen = shown ? shown.getAttribute("data-prediction-id") : item;
    setTriggerValue("key", { key: key, item: onScreen, at: Date.now() });
  };
  window.__tuneloopKeyHandler = handler;
  document.addEventListener("keydown", handler, true);
  return () => {
    document.removeEventListener("keydown", handler, true);
    if (window.__tuneloopKeyHandler === handler) window.__tuneloopKeyHandler = null;
  };
}
