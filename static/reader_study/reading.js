/**
 * The reader's case page: active reading time, confidence read-out, biopsy target from the viewer's
 * crosshair, and one submit per click. No inline script (Content-Security-Policy); the server
 * validates and clamps everything sent from here.
 *
 * Active time counts only while the page is visible and the window has focus (a reader who switches
 * to the hospital PACS or leaves the tab does not accumulate time); it goes in the hidden
 * `active_seconds` field on submit.
 */
(function () {
  'use strict';
  const form = document.getElementById('answer-form');
  if (!form) return;

  let activeMs = 0;
  let since = null;
  const isActive = () => document.visibilityState === 'visible' && document.hasFocus();
  const tick = () => {
    const now = performance.now();
    if (since !== null) activeMs += now - since;
    since = isActive() ? now : null;
  };
  tick();
  ['visibilitychange', 'focus', 'blur', 'pageshow', 'pagehide'].forEach((ev) =>
    window.addEventListener(ev, tick, true));
  document.addEventListener('visibilitychange', tick);
  // focus may be missing in a page opened without user interaction: any interaction counts as active
  ['pointerdown', 'keydown', 'wheel'].forEach((ev) => document.addEventListener(ev, () => {
    if (since === null && document.visibilityState === 'visible') since = performance.now();
  }, true));

  const activeField = form.querySelector('input[name="active_seconds"]');
  const button = document.getElementById('submit-answer');
  form.addEventListener('submit', (event) => {
    if (form.dataset.submitting === '1') {
      event.preventDefault();  // a double click sends one answer
      return;
    }
    tick();
    if (activeField) activeField.value = (activeMs / 1000).toFixed(1);
    form.dataset.submitting = '1';
    if (button) {
      button.setAttribute('aria-busy', 'true');
      button.textContent = 'Saving…';
    }
  });

  const confidence = form.querySelector('input[name="confidence"]');
  const confidenceOut = document.getElementById('confidence-out');
  if (confidence && confidenceOut) {
    confidence.addEventListener('input', () => { confidenceOut.textContent = confidence.value; });
  }

  const setTarget = document.getElementById('set-target');
  const targetField = form.querySelector('input[name="target_mm"]');
  const targetOut = document.getElementById('target-out');
  const showTarget = (mm) => {
    if (targetOut) targetOut.textContent = `x ${mm[0]}, y ${mm[1]}, z ${mm[2]} mm (scanner coordinates)`;
  };
  if (targetField && targetField.value) {  // the form came back (an answer was missing): show the target kept
    try {
      const kept = JSON.parse(targetField.value);
      if (Array.isArray(kept) && kept.length === 3 && kept.every(Number.isFinite)) showTarget(kept);
    } catch (err) { /* the server says what is wrong with it */ }
  }
  if (setTarget && targetField) {
    setTarget.addEventListener('click', () => {
      const host = document.querySelector('[data-aminopet-viewer]');
      const viewer = host && host.aminopetViewer;
      let mm = null;
      const loc = viewer && viewer.location && viewer.location();
      if (loc && loc.mm) mm = Array.from(loc.mm).slice(0, 3);
      else if (viewer && viewer.nv) mm = Array.from(viewer.nv.frac2mm(viewer.nv.scene.crosshairPos)).slice(0, 3);
      if (!mm || mm.some((v) => !Number.isFinite(v))) {
        if (targetOut) targetOut.textContent = 'the viewer is not ready yet';
        return;
      }
      mm = mm.map((v) => Math.round(v * 10) / 10);
      targetField.value = JSON.stringify(mm);
      showTarget(mm);
      // the target is set now: the server's "place the target" message no longer applies
      const field = setTarget.closest('.field');
      if (field) {
        field.classList.remove('has-error');
        field.querySelectorAll('.field-error').forEach((node) => { node.hidden = true; });
      }
    });
  }
}());
