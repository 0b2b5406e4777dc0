/**
 * The AminoPET viewer: amino-acid PET fused on MRI with NiiVue, plus the controls a reader needs.
 *
 * `mount(target, options)` builds the UI around a NiiVue canvas and loads the volumes of a
 * configuration (see config.js). It returns a viewer object whose `ready` promise settles once
 * the volumes are loaded; the same object is stored on `element.aminopetViewer`, and
 * `element.dataset.viewerState` goes "loading" -> "ready" or "error".
 */
import { Niivue } from '@niivue/niivue';

import {
  ConfigError,
  SLICE_TYPES,
  formatMm,
  formatValue,
  parseConfig,
  readElementConfig,
} from './config.js';

/** Colormaps offered for the PET volume (filtered by what NiiVue ships). */
const PET_COLORMAPS = ['warm', 'hot', 'red', 'plasma', 'inferno', 'viridis', 'jet', 'nih', 'gray'];

const SLICE_LABELS = [
  ['axial', 'Axial'],
  ['coronal', 'Coronal'],
  ['sagittal', 'Sagittal'],
  ['multiplanar', 'Multiplanar'],
  ['render', '3D'],
];

let viewerCount = 0;

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function labelled(text, control) {
  return el('label', { class: 'aminopet-field' }, [el('span', { text }), control]);
}

/**
 * Build the DOM of one viewer inside `root`; returns the nodes the viewer drives.
 */
function buildUi(root, canvas, config) {
  const id = `aminopet-viewer-${++viewerCount}`;
  const pet = config.petIndex === null ? null : config.volumes[config.petIndex];
  root.classList.add('aminopet-viewer');

  const sliceButtons = SLICE_LABELS.map(([key, text]) => el('button', {
    type: 'button',
    class: 'aminopet-btn',
    'data-slice-type': key,
    'aria-pressed': key === config.sliceType ? 'true' : 'false',
    text,
  }));
  const sliceGroup = el('div', { class: 'aminopet-group', role: 'group', 'aria-label': 'Slice layout' }, sliceButtons);

  const toolbar = el('div', { class: 'aminopet-toolbar', role: 'toolbar', 'aria-label': 'Viewer controls' }, [sliceGroup]);
  const controls = {};
  if (pet) {
    controls.opacity = el('input', {
      type: 'range', min: 0, max: 1, step: 0.05, value: pet.opacity,
      'data-control': 'pet-opacity', id: `${id}-opacity`,
    });
    controls.opacityOut = el('output', { for: `${id}-opacity`, class: 'aminopet-num', text: pet.opacity.toFixed(2) });
    controls.calMin = el('input', { type: 'number', step: 'any', 'data-control': 'pet-min', inputmode: 'decimal' });
    controls.calMax = el('input', { type: 'number', step: 'any', 'data-control': 'pet-max', inputmode: 'decimal' });
    controls.colormap = el('select', { 'data-control': 'pet-colormap' });
    const petName = pet.name;
    toolbar.append(
      el('div', { class: 'aminopet-group', role: 'group', 'aria-label': `${petName} display` }, [
        labelled(`${petName} opacity`, controls.opacity), controls.opacityOut,
        labelled(`${petName} min`, controls.calMin),
        labelled(`${petName} max`, controls.calMax),
        labelled(`${petName} colormap`, controls.colormap),
      ]),
    );
  }

  if (!canvas) canvas = el('canvas');
  canvas.classList.add('aminopet-canvas');
  canvas.setAttribute('aria-label', `Image viewer: ${config.volumes.map((v) => v.name).join(' fused with ')}`);
  canvas.setAttribute('tabindex', '0');
  const stage = el('div', { class: 'aminopet-stage' }, [canvas]);
  if (config.height) stage.style.height = config.height;

  const readoutMm = el('span', { class: 'aminopet-readout-mm', 'data-readout': 'mm', text: '–' });
  const readoutValues = config.volumes.map((v, i) => el('span', {
    class: 'aminopet-readout-value', 'data-readout-volume': i, text: '–',
  }));
  const readoutItems = [el('span', { class: 'aminopet-readout-item' }, [el('span', { class: 'aminopet-readout-label', text: 'mm ' }), readoutMm])];
  config.volumes.forEach((v, i) => {
    readoutItems.push(el('span', { class: 'aminopet-readout-item' }, [
      el('span', { class: 'aminopet-readout-label', text: `${v.name} ` }), readoutValues[i],
    ]));
  });
  const readout = el('output', { class: 'aminopet-readout', 'aria-live': 'polite', 'aria-label': 'Crosshair position and values' }, readoutItems);

  const markerButtons = config.markers.map((m, i) => {
    const swatch = el('span', { class: 'aminopet-swatch', 'aria-hidden': 'true' });
    swatch.style.backgroundColor = m.color;
    return el('button', {
      type: 'button', class: 'aminopet-btn', 'data-marker': i,
      title: `Go to ${m.name} (${formatMm(m.mm)} mm)`,
    }, [swatch, `Go to ${m.name}`]);
  });
  const markerGroup = el('div', { class: 'aminopet-group aminopet-markers', role: 'group', 'aria-label': 'Markers' }, markerButtons);
  if (markerButtons.length === 0) markerGroup.hidden = true;

  const status = el('p', { class: 'aminopet-status', role: 'status', text: 'Loading images…' });
  const error = el('p', { class: 'aminopet-error', role: 'alert' });
  error.hidden = true;

  root.append(toolbar, stage, readout, markerGroup, status, error);
  return { canvas, sliceButtons, controls, readoutMm, readoutValues, markerButtons, status, error };
}

function parseColor(css) {
  // Resolve any CSS colour to [r, g, b, a] in 0..1 through a 1x1 2D canvas.
  const ctx = document.createElement('canvas').getContext('2d');
  if (!ctx) return [0, 1, 0, 1];
  ctx.fillStyle = '#000';
  ctx.fillStyle = css;
  ctx.fillRect(0, 0, 1, 1);
  const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data;
  return [r / 255, g / 255, b / 255, a / 255];
}

/**
 * Mount a viewer.
 *
 * @param {Element|string} target the container element (the UI is built inside it) or a
 *   `<canvas>` (the UI is built around it, in a new wrapper), or a CSS selector for either.
 * @param {object} [options] a configuration object (see config.js). When omitted it is read
 *   from the element (`<script type="application/json">` child or `data-config`).
 *   `options.onLocationChange(location)` is called with NiiVue's location data.
 * @returns {object} the viewer: `{element, nv, config, ready, setSliceType(name),
 *   setPetOpacity(x), setPetWindow(min, max), setPetColormap(name), goToMm([x,y,z]),
 *   goToMarker(indexOrName), location(), destroy()}`.
 */
export function mount(target, options) {
  const element = typeof target === 'string' ? document.querySelector(target) : target;
  if (!element || !(element instanceof Element)) {
    throw new ConfigError(`AminoPET viewer: mount target ${JSON.stringify(String(target))} is not an element`);
  }
  if (element.aminopetViewer) return element.aminopetViewer;

  let root = element;
  let canvas = null;
  if (element instanceof HTMLCanvasElement) {
    canvas = element;
    root = el('div');
    element.replaceWith(root);
  }

  const viewer = { element, root, nv: null, config: null, ready: null };
  element.aminopetViewer = viewer;
  element.dataset.viewerState = 'loading';

  let ui = null;
  const fail = (err) => {
    const message = err instanceof Error ? err.message : String(err);
    element.dataset.viewerState = 'error';
    viewer.errorMessage = message;
    if (ui) {
      ui.status.hidden = true;
      ui.error.textContent = `The viewer could not be opened: ${message}`;
      ui.error.hidden = false;
    } else {
      const box = el('p', { class: 'aminopet-error', role: 'alert', text: `The viewer could not be opened: ${message}` });
      root.append(box);
    }
    throw err;
  };

  viewer.ready = (async () => {
    let config;
    try {
      const raw = options ?? readElementConfig(element);
      config = parseConfig(raw);
    } catch (err) {
      return fail(err);
    }
    viewer.config = config;
    ui = buildUi(root, canvas, config);
    viewer.ui = ui;

    const nv = new Niivue({
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: true,
      isColorbar: false,
      dragAndDropEnabled: false,
      loadingText: '',
      logLevel: 'warn',
      multiplanarForceRender: false,
      crosshairWidth: 0.5,
      isRadiologicalConvention: config.radiological,
    });
    viewer.nv = nv;

    const renderLocation = (data) => {
      if (!data) return;
      ui.readoutMm.textContent = formatMm(data.mm);
      (data.values || []).forEach((v, i) => {
        if (ui.readoutValues[i]) ui.readoutValues[i].textContent = formatValue(v.value);
      });
      viewer.lastLocation = data;
      if (options && typeof options.onLocationChange === 'function') options.onLocationChange(data);
    };
    nv.onLocationChange = renderLocation;

    try {
      await nv.attachToCanvas(ui.canvas);
    } catch (err) {
      return fail(new Error(`WebGL2 is not available in this browser (${err.message || err})`));
    }

    const known = new Set(nv.colormaps());
    for (const v of config.volumes) {
      if (!known.has(v.colormap)) {
        return fail(new ConfigError(`colormap "${v.colormap}" of volume "${v.name}" is not a NiiVue colormap`));
      }
    }

    try {
      await nv.loadVolumes(config.volumes.map((v) => ({
        url: v.url,
        name: v.filename,
        colormap: v.colormap,
        opacity: v.opacity,
        cal_min: v.cal_min,
        cal_max: v.cal_max,
      })));
    } catch (err) {
      return fail(new Error(`a volume failed to load (${config.volumes.map((v) => v.url).join(', ')}): ${err.message || err}`));
    }
    if (nv.volumes.length !== config.volumes.length) {
      return fail(new Error(`loaded ${nv.volumes.length} of ${config.volumes.length} volumes`));
    }

    wireControls(viewer, nv, config, ui, known);
    nv.setSliceType(SLICE_TYPES[config.sliceType]);
    if (config.crosshair) viewer.goToMm(config.crosshair);
    else if (typeof nv.createOnLocationChange === 'function') nv.createOnLocationChange();
    nv.drawScene();

    ui.status.textContent = '';
    ui.status.hidden = true;
    element.dataset.viewerState = 'ready';
    return viewer;
  })();
  // Callers await `ready`; this only keeps an unobserved failure from being reported twice.
  viewer.ready.catch(() => {});
  viewer.destroy = () => {
    if (viewer.nv && typeof viewer.nv.cleanup === 'function') viewer.nv.cleanup();
    delete element.aminopetViewer;
    delete element.dataset.viewerState;
  };
  return viewer;
}

function wireControls(viewer, nv, config, ui, knownColormaps) {
  const pet = config.petIndex;

  viewer.setSliceType = (name) => {
    if (!(name in SLICE_TYPES)) {
      throw new ConfigError(`slice type must be one of ${Object.keys(SLICE_TYPES).join(', ')}, got ${JSON.stringify(name)}`);
    }
    nv.setSliceType(SLICE_TYPES[name]);
    ui.sliceButtons.forEach((b) => b.setAttribute('aria-pressed', b.dataset.sliceType === name ? 'true' : 'false'));
  };
  ui.sliceButtons.forEach((b) => b.addEventListener('click', () => viewer.setSliceType(b.dataset.sliceType)));

  viewer.goToMm = (mm) => {
    const frac = Array.from(nv.mm2frac(mm)).map((f) => Math.min(1, Math.max(0, f)));
    nv.scene.crosshairPos = frac;
    nv.createOnLocationChange();
    nv.drawScene();
  };
  viewer.goToMarker = (which) => {
    const marker = typeof which === 'number'
      ? config.markers[which]
      : config.markers.find((m) => m.name === which);
    if (!marker) throw new ConfigError(`no marker ${JSON.stringify(which)}`);
    nv.setCrosshairColor(parseColor(marker.color));
    viewer.goToMm(marker.mm);
  };
  ui.markerButtons.forEach((b) => b.addEventListener('click', () => viewer.goToMarker(Number(b.dataset.marker))));

  viewer.location = () => viewer.lastLocation ?? null;
  if (pet === null) return;

  const { opacity, opacityOut, calMin, calMax, colormap } = ui.controls;
  const vol = nv.volumes[pet];

  viewer.setPetOpacity = (value) => {
    const x = Math.min(1, Math.max(0, Number(value)));
    if (!Number.isFinite(x)) throw new ConfigError(`PET opacity must be a number in [0, 1], got ${value}`);
    nv.setOpacity(pet, x);
    opacity.value = String(x);
    opacityOut.textContent = x.toFixed(2);
  };
  opacity.addEventListener('input', () => viewer.setPetOpacity(opacity.value));

  const showWindow = () => {
    calMin.value = String(formatValue(vol.cal_min));
    calMax.value = String(formatValue(vol.cal_max));
  };
  viewer.setPetWindow = (min, max) => {
    const lo = Number(min);
    const hi = Number(max);
    if (!Number.isFinite(lo) || !Number.isFinite(hi) || !(lo < hi)) {
      ui.error.textContent = `PET window: min (${min}) must be a number below max (${max}).`;
      ui.error.hidden = false;
      showWindow();
      return false;
    }
    ui.error.hidden = true;
    vol.cal_min = lo;
    vol.cal_max = hi;
    nv.updateGLVolume();
    showWindow();
    return true;
  };
  const onWindow = () => viewer.setPetWindow(calMin.value, calMax.value);
  calMin.addEventListener('change', onWindow);
  calMax.addEventListener('change', onWindow);
  showWindow();

  const names = PET_COLORMAPS.filter((n) => knownColormaps.has(n));
  if (!names.includes(vol.colormap)) names.unshift(vol.colormap);
  for (const n of names) colormap.append(el('option', { value: n, text: n, selected: n === vol.colormap }));
  colormap.value = vol.colormap;
  viewer.setPetColormap = (name) => {
    if (!knownColormaps.has(name)) throw new ConfigError(`colormap "${name}" is not a NiiVue colormap`);
    nv.setColormap(vol.id, name);
    colormap.value = name;
  };
  colormap.addEventListener('change', () => viewer.setPetColormap(colormap.value));
}

/**
 * Mount every `[data-aminopet-viewer]` element of `root` that has no viewer yet.
 *
 * @param {ParentNode} [root=document]
 * @returns {object[]} the viewers
 */
export function mountAll(root = document) {
  return Array.from(root.querySelectorAll('[data-aminopet-viewer]'))
    .filter((node) => !node.aminopetViewer)
    .map((node) => mount(node));
}
