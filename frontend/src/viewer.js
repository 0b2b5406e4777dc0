/**
 * The AminoPET viewer: amino-acid PET fused on MRI with NiiVue, plus the controls a reader needs.
 *
 * `mount(target, options)` builds the UI around a NiiVue canvas and loads the volumes of a
 * configuration (see config.js). Order of work, for a fast first image: the MRI base and the PET
 * are fetched and drawn first (2D slices only, no 3D tile, so no gradient texture); the overlays
 * (VOI, parametric maps, AI heat map) are fetched after that first image; alternative bases and the
 * 4D dynamic PET only when the reader asks for them.
 *
 * `element.dataset.viewerState` goes "loading" -> "drawn" (the first image is on screen; a
 * "Loading images…" status is shown until then) or "error". `viewer.ready` resolves at "drawn",
 * `viewer.overlaysReady` once every overlay is loaded. `performance.mark('aminopet:drawn')` is set
 * at the first image (bench/bench_viewer.py reads it).
 */
import { Niivue, NVImage, SHOW_RENDER } from '@niivue/niivue';

import {
  ConfigError,
  SLICE_TYPES,
  formatMm,
  formatValue,
  formatWithUnit,
  frameLabel,
  parseConfig,
  readElementConfig,
  tacChartModel,
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

const SVG_NS = 'http://www.w3.org/2000/svg';
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

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function labelled(text, control, extra = null) {
  return el('label', { class: 'aminopet-field' }, [el('span', { text }), control, ...(extra ? [extra] : [])]);
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));

function unitSuffix(unit) {
  return unit ? ` (${unit})` : '';
}

/**
 * Build the DOM of one viewer inside `root`; returns the nodes the viewer drives.
 */
function buildUi(root, canvas, config) {
  const id = `aminopet-viewer-${++viewerCount}`;
  const pet = config.petIndex === null ? null : config.volumes[config.petIndex];
  root.classList.add('aminopet-viewer');

  // --- toolbar: layouts, MRI base, markers
  const sliceButtons = SLICE_LABELS.map(([key, text]) => el('button', {
    type: 'button', class: 'aminopet-btn', 'data-slice-type': key,
    'aria-pressed': key === config.sliceType ? 'true' : 'false', text,
  }));
  const toolbar = el('div', { class: 'aminopet-toolbar', role: 'toolbar', 'aria-label': 'Viewer controls' }, [
    el('div', { class: 'aminopet-group', role: 'group', 'aria-label': 'Slice layout' }, sliceButtons),
  ]);
  const baseButtons = config.bases.length > 1 ? config.bases.map((b) => el('button', {
    type: 'button', class: 'aminopet-btn', 'data-base': b.key, title: b.description || b.name,
    'aria-pressed': b.key === config.volumes[0].key ? 'true' : 'false', text: b.name,
  })) : [];
  if (baseButtons.length) {
    toolbar.append(el('div', { class: 'aminopet-group', role: 'group', 'aria-label': 'MRI base image' }, [
      el('span', { class: 'aminopet-muted', text: 'MRI' }), ...baseButtons,
    ]));
  }
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
  toolbar.append(markerGroup);

  // --- stage: canvas with the loading status over it
  if (!canvas) canvas = el('canvas');
  canvas.classList.add('aminopet-canvas');
  canvas.setAttribute('aria-label', `Image viewer: ${config.volumes.slice(0, 2).map((v) => v.name).join(' fused with ')}`);
  canvas.setAttribute('tabindex', '0');
  const status = el('p', { class: 'aminopet-status', role: 'status', 'aria-live': 'polite', text: 'Loading images…' });
  const stage = el('div', { class: 'aminopet-stage' }, [canvas, status]);
  if (config.height) {
    stage.style.height = config.height;
    stage.style.flex = 'none';
  }

  // --- readout under the canvas: position and the value of each layer with its unit
  const readoutMm = el('span', { class: 'aminopet-readout-mm', 'data-readout': 'mm', text: '–' });
  const readoutItems = [el('span', { class: 'aminopet-readout-item' }, [
    el('span', { class: 'aminopet-readout-label', text: 'Crosshair ' }), readoutMm, ' mm',
  ])];
  const readoutValues = {};
  const readoutBoxes = {};
  config.volumes.forEach((v, i) => {
    readoutValues[v.key] = el('span', {
      class: 'aminopet-readout-value', 'data-readout-volume': i, 'data-readout-layer': v.key, text: '–',
    });
    readoutBoxes[v.key] = el('span', { class: 'aminopet-readout-item' }, [
      el('span', { class: 'aminopet-readout-label', text: `${v.name} ` }), readoutValues[v.key],
    ]);
    if (!v.visible) readoutBoxes[v.key].hidden = true;
    readoutItems.push(readoutBoxes[v.key]);
  });
  const readout = el('output', { class: 'aminopet-readout', 'aria-live': 'off', 'aria-label': 'Crosshair position and values' }, readoutItems);
  const error = el('p', { class: 'aminopet-error', role: 'alert' });
  error.hidden = true;
  const main = el('div', { class: 'aminopet-main' }, [stage, readout, error]);

  // --- side panel: PET display, layers, dynamic frames, TAC
  const side = el('div', { class: 'aminopet-side' });
  const controls = {};
  if (pet) {
    controls.opacity = el('input', {
      type: 'range', min: 0, max: 1, step: 0.05, value: pet.opacity, 'data-control': 'pet-opacity', id: `${id}-opacity`,
      'aria-label': `${pet.name} opacity`,
    });
    controls.opacityOut = el('output', { for: `${id}-opacity`, class: 'aminopet-num', text: pet.opacity.toFixed(2) });
    controls.calMin = el('input', {
      type: 'number', step: 'any', 'data-control': 'pet-min', inputmode: 'decimal', 'aria-label': `${pet.name} min`,
    });
    controls.calMax = el('input', {
      type: 'number', step: 'any', 'data-control': 'pet-max', inputmode: 'decimal', 'aria-label': `${pet.name} max`,
    });
    controls.colormap = el('select', { 'data-control': 'pet-colormap', 'aria-label': `${pet.name} colormap` });
    const section = el('fieldset', { class: 'aminopet-section', 'aria-label': `${pet.name} display` }, [
      el('legend', { text: `${pet.name}${unitSuffix(pet.unit)}` }),
      el('div', { class: 'aminopet-row' }, [el('span', { class: 'aminopet-key', text: 'Opacity' }), controls.opacity, controls.opacityOut]),
      el('div', { class: 'aminopet-row', title: pet.window_basis ? `Default window: ${pet.window_basis}` : null }, [
        el('span', { class: 'aminopet-key', text: 'Window' }), controls.calMin, el('span', { text: '–' }), controls.calMax,
        pet.unit ? el('span', { class: 'aminopet-unit', text: pet.unit }) : '',
      ]),
      el('div', { class: 'aminopet-row' }, [el('span', { class: 'aminopet-key', text: 'Colours' }), controls.colormap]),
    ]);
    if (pet.window_basis) {
      section.append(el('p', { class: 'aminopet-note', 'data-window-basis': '', text: `Default window: ${pet.window_basis}.` }));
    }
    side.append(section);
  }

  const overlays = config.volumes.filter((v, i) => i !== 0 && i !== config.petIndex);
  const layerRows = {};
  if (overlays.length) {
    const list = el('fieldset', { class: 'aminopet-section aminopet-layers', 'aria-label': 'Overlays' }, [el('legend', { text: 'Overlays' })]);
    for (const v of overlays) {
      const toggle = el('input', { type: 'checkbox', 'data-layer-toggle': v.key, checked: v.visible });
      const slider = el('input', {
        type: 'range', min: 0, max: 1, step: 0.05, value: v.opacity, 'data-layer-opacity': v.key,
        'aria-label': `${v.name} opacity`,
      });
      const state = el('span', { class: 'aminopet-layer-state', text: '' });
      const name = el('label', { class: 'aminopet-layer-name' }, [
        toggle, el('span', { text: v.name }),
        v.unit ? el('span', { class: 'aminopet-unit', text: v.unit }) : '', state,
      ]);
      // the meaning is the row's tooltip, so rows never change height
      const row = el('div', { class: 'aminopet-layer', 'data-layer': v.key, title: v.description || null }, [name, slider]);
      layerRows[v.key] = { toggle, slider, state };
      list.append(row);
    }
    side.append(list);
  }

  if (config.dynamic) {
    const n = config.dynamic.frames_mid_min.length;
    controls.dynToggle = el('input', { type: 'checkbox', 'data-control': 'dynamic-toggle' });
    controls.frame = el('input', {
      type: 'range', min: 0, max: n - 1, step: 1, value: n - 1, 'data-control': 'frame', 'aria-label': 'Dynamic PET frame',
    });
    controls.frameOut = el('output', { class: 'aminopet-note', 'data-frame-label': '', text: frameLabel(config.dynamic, n - 1) });
    side.append(el('fieldset', { class: 'aminopet-section', 'aria-label': 'Dynamic PET' }, [
      el('legend', { text: `Dynamic PET${unitSuffix(config.dynamic.unit)}` }),
      el('div', { class: 'aminopet-layer', title: 'Show one frame of the dynamic PET instead of the static PET (loaded on first use)' }, [
        el('label', { class: 'aminopet-layer-name' }, [controls.dynToggle, el('span', { text: 'Frame' })]), controls.frame,
      ]),
      controls.frameOut,
    ]));
  }

  let tacChart = null;
  if (config.tac && config.tac.curves.length) tacChart = buildTacChart(config.tac);
  if (tacChart) side.append(tacChart.node);
  if (!side.childElementCount) side.hidden = true;

  root.append(toolbar, main, side);
  return {
    canvas, stage, sliceButtons, baseButtons, controls, readoutMm, readoutValues, readoutBoxes, markerButtons,
    status, error, layerRows, tacChart,
  };
}

/** The TAC chart: SVG polylines per curve, axes in min and SUV, a marker at the current frame. */
function buildTacChart(tac) {
  const width = 236;
  const height = 118;
  const model = tacChartModel(tac, { width, height });
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, width: '100%', role: 'img', class: 'aminopet-tac-svg',
    'aria-label': `Time-activity curves: ${tac.y_label || 'value'} (${tac.y_unit}) against ${tac.x_label} (${tac.x_unit})`,
  });
  const [x0, x1] = [model.x(0), model.x(model.xMax)];
  const [y0, y1] = [model.y(0), model.y(model.yMax)];
  for (const t of model.xTicks) {
    chart.append(svg('line', { x1: model.x(t), x2: model.x(t), y1: y0, y2: y1, class: 'aminopet-grid' }));
    chart.append(svg('text', { x: model.x(t), y: y0 + 11, 'text-anchor': 'middle', class: 'aminopet-tick' }, formatValue(t)));
  }
  for (const v of model.yTicks) {
    chart.append(svg('line', { x1: x0, x2: x1, y1: model.y(v), y2: model.y(v), class: 'aminopet-grid' }));
    chart.append(svg('text', { x: x0 - 3, y: model.y(v) + 3, 'text-anchor': 'end', class: 'aminopet-tick' }, formatValue(v)));
  }
  chart.append(svg('text', { x: (x0 + x1) / 2, y: height - 2, 'text-anchor': 'middle', class: 'aminopet-axis' },
    `${tac.x_label} (${tac.x_unit})`));
  chart.append(svg('text', { x: 9, y: (y0 + y1) / 2, 'text-anchor': 'middle', class: 'aminopet-axis',
    transform: `rotate(-90 9 ${(y0 + y1) / 2})` }, tac.y_unit));
  tac.curves.forEach((c, i) => {
    const path = svg('path', { d: model.paths[i], fill: 'none', stroke: c.color, 'stroke-width': 1.6, 'data-curve': c.key });
    path.append(svg('title', {}, `${c.name} (${tac.y_unit})`));
    chart.append(path);
  });
  const marker = svg('line', { x1: 0, x2: 0, y1: y0, y2: y1, class: 'aminopet-frame-marker', 'data-frame-marker': '' });
  marker.style.display = 'none';
  chart.append(marker);
  const legend = el('ul', { class: 'aminopet-legend' }, tac.curves.map((c) => {
    const sw = el('span', { class: 'aminopet-swatch', 'aria-hidden': 'true' });
    sw.style.backgroundColor = c.color;
    return el('li', {}, [sw, c.name]);
  }));
  const node = el('figure', { class: 'aminopet-section aminopet-tac', 'data-tac': '' }, [
    el('figcaption', { text: `Time-activity curves, ${tac.y_unit} vs ${tac.x_unit}` }), chart, legend,
  ]);
  const setMarker = (tMin, active) => {
    if (tMin === null || tMin === undefined) {
      marker.style.display = 'none';
      return;
    }
    const x = model.x(tMin);
    marker.setAttribute('x1', x);
    marker.setAttribute('x2', x);
    marker.classList.toggle('aminopet-inactive', !active);
    marker.style.display = '';
  };
  return { node, setMarker, model };
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

function imageOptions(v, opacity) {
  return {
    url: v.url, name: v.filename, colormap: v.colormap, opacity,
    cal_min: v.cal_min, cal_max: v.cal_max, colormapNegative: v.colormap_negative || '',
  };
}

/**
 * Mount a viewer.
 *
 * @param {Element|string} target the container element (the UI is built inside it) or a
 *   `<canvas>` (the UI is built around it, in a new wrapper), or a CSS selector for either.
 * @param {object} [options] a configuration object (see config.js). When omitted it is read
 *   from the element (`<script type="application/json">` child or `data-config`).
 *   `options.onLocationChange(location)` is called with NiiVue's location data.
 * @returns {object} the viewer: `{element, nv, config, ready, overlaysReady, setSliceType(name),
 *   setPetOpacity(x), setPetWindow(min, max), setPetColormap(name), setLayerVisible(key, on),
 *   setLayerOpacity(key, x), setBase(key), showFrame(i), showStatic(), goToMm([x,y,z]),
 *   goToMarker(indexOrName), crosshairMm(), location(), destroy()}`.
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

  const viewer = { element, root, nv: null, config: null, ready: null, timings: {} };
  element.aminopetViewer = viewer;
  element.dataset.viewerState = 'loading';
  const t0 = performance.now();
  const mark = (name) => {
    viewer.timings[name] = performance.now() - t0;
    try { performance.mark(`aminopet:${name}`); } catch { /* marks are optional */ }
  };

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
      root.append(el('p', { class: 'aminopet-error', role: 'alert', text: `The viewer could not be opened: ${message}` }));
    }
    throw err;
  };

  let resolveOverlays;
  viewer.overlaysReady = new Promise((resolve) => { resolveOverlays = resolve; });
  viewer.overlaysReady.catch(() => {});

  viewer.ready = (async () => {
    let config;
    try {
      config = parseConfig(options ?? readElementConfig(element));
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
      // No 3D tile in the multiplanar layout: volume rendering (gradients, ray casting) is what made
      // the first image slow on software WebGL; the 3D layout button still offers it.
      multiplanarShowRender: SHOW_RENDER.NEVER,
      multiplanarForceRender: false,
      crosshairWidth: 0.5,
      isRadiologicalConvention: config.radiological,
    });
    viewer.nv = nv;
    /** key -> {cfg, image: NVImage|null, loading: Promise|null} */
    const layers = new Map();
    config.volumes.forEach((v) => layers.set(v.key, { cfg: v, image: null, loading: null }));
    config.bases.forEach((b) => { if (!layers.has(b.key)) layers.set(b.key, { cfg: b, image: null, loading: null }); });
    if (config.dynamic) layers.set('dynamic', { cfg: config.dynamic, image: null, loading: null });
    viewer.layers = layers;

    // Fetch the first image's bytes now, while WebGL compiles its shaders (a template may have
    // preloaded them already: <link rel="preload" as="fetch" crossorigin>).
    const first = config.volumes.slice(0, config.petIndex === null ? 1 : 2);
    const fetched = first.map((v) => fetch(v.url).then((response) => {
      if (!response.ok) throw new Error(`${v.url}: HTTP ${response.status} ${response.statusText}`);
      return response.arrayBuffer();
    }));
    fetched.forEach((p) => p.catch(() => {}));

    nv.onLocationChange = (data) => {
      if (!data) return;
      viewer.lastLocation = data;
      renderReadout(viewer, data);
      if (options && typeof options.onLocationChange === 'function') options.onLocationChange(data);
    };

    try {
      await nv.attachToCanvas(ui.canvas, false);
    } catch (err) {
      return fail(new Error(`WebGL2 is not available in this browser (${err.message || err})`));
    }
    const known = new Set(nv.colormaps());
    for (const v of [...config.volumes, ...config.bases, ...(config.dynamic ? [config.dynamic] : [])]) {
      for (const cm of [v.colormap, v.colormap_negative].filter(Boolean)) {
        if (!known.has(cm)) return fail(new ConfigError(`colormap "${cm}" of volume "${v.name}" is not a NiiVue colormap`));
      }
    }

    // First image: base + PET only, in the final layout; no 3D gradient unless the 3D view shows.
    nv.aminopetSkipGradient = () => nv.opts.sliceType !== SLICE_TYPES.render;
    nv.setSliceType(SLICE_TYPES[config.sliceType]);
    try {
      const buffers = await Promise.all(fetched);
      await nv.loadVolumes(first.map((v, i) => ({ ...imageOptions(v, v.visible ? v.opacity : 0), url: buffers[i] })));
    } catch (err) {
      return fail(new Error(`a volume failed to load (${first.map((v) => v.url).join(', ')}): ${err.message || err}`));
    }
    if (nv.volumes.length !== first.length) return fail(new Error(`loaded ${nv.volumes.length} of ${first.length} volumes`));
    first.forEach((v, i) => { layers.get(v.key).image = nv.volumes[i]; });
    mark('loaded');

    wireControls(viewer, nv, config, ui, known, layers);
    mark('wired');
    if (config.crosshair) viewer.goToMm(config.crosshair, false);
    nv.drawScene();
    mark('scene');
    if (typeof nv.createOnLocationChange === 'function') nv.createOnLocationChange();
    mark('readout');
    await nextFrame();
    mark('frame1');
    await nextFrame();
    ui.status.textContent = '';
    ui.status.hidden = true;
    element.dataset.viewerState = 'drawn';
    mark('drawn');

    // Overlays after the first image, fetched together, added in configuration order.
    const rest = config.volumes.slice(first.length);
    Promise.all(rest.map((v) => viewer.loadLayer(v.key, { defer: true })))
      .then(async (images) => {
        images.forEach((img) => { if (img && nv.getVolumeIndexByID(img.id) < 0) nv.addVolume(img); });
        if (rest.length) viewer.refresh();
        mark('overlays');
        resolveOverlays(viewer);
      })
      .catch((err) => {
        ui.error.textContent = `An overlay could not be loaded: ${err.message || err}`;
        ui.error.hidden = false;
        resolveOverlays(viewer);
      });
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

function renderReadout(viewer, data) {
  const { ui, nv, layers, config } = viewer;
  ui.readoutMm.textContent = formatMm(data.mm);
  const values = data.values || [];
  for (const [key, layer] of layers) {
    const out = ui.readoutValues[key];
    if (!out) continue;
    let image = layer.image;
    if (key === 'pet' && viewer.activePet === 'dynamic') image = layers.get('dynamic').image;
    if (key === config.volumes[0].key) image = nv.volumes[0];
    const idx = image ? nv.getVolumeIndexByID(image.id) : -1;
    const value = idx >= 0 && values[idx] ? values[idx].value : NaN;
    const cfg = key === config.volumes[0].key ? (viewer.baseCfg ?? layer.cfg) : layer.cfg;
    out.textContent = formatWithUnit(value, cfg.unit);
  }
}

function wireControls(viewer, nv, config, ui, knownColormaps, layers) {
  const indexOf = (image) => (image ? nv.getVolumeIndexByID(image.id) : -1);
  viewer.refresh = () => {
    nv.updateGLVolume();
    if (typeof nv.createOnLocationChange === 'function') nv.createOnLocationChange();
  };

  /** Fetch a layer's image once; `defer` leaves adding it to the scene to the caller. */
  viewer.loadLayer = (key, { defer = false } = {}) => {
    const layer = layers.get(key);
    if (!layer) return Promise.reject(new ConfigError(`no layer "${key}"`));
    if (layer.image) return Promise.resolve(layer.image);
    if (!layer.loading) {
      const row = ui.layerRows[key];
      if (row) row.state.textContent = 'loading…';
      const v = layer.cfg;
      const opacity = key === 'dynamic' || config.bases.some((b) => b.key === key) ? 0 : (v.visible ? v.opacity : 0);
      layer.loading = NVImage.loadFromUrl(imageOptions(v, opacity)).then((img) => {
        layer.image = img;
        if (row) row.state.textContent = '';
        if (!defer) nv.addVolume(img);
        return img;
      }).catch((err) => {
        layer.loading = null;
        if (row) row.state.textContent = 'failed';
        throw new Error(`${v.name} (${v.url}): ${err.message || err}`);
      });
    }
    return layer.loading.then(async (img) => {
      if (!defer && indexOf(img) < 0) nv.addVolume(img);
      return img;
    });
  };

  viewer.setSliceType = (name) => {
    if (!(name in SLICE_TYPES)) {
      throw new ConfigError(`slice type must be one of ${Object.keys(SLICE_TYPES).join(', ')}, got ${JSON.stringify(name)}`);
    }
    nv.setSliceType(SLICE_TYPES[name]);
    if (name === 'render' && nv.aminopetGradientStale) {
      nv.aminopetGradientStale = false;
      nv.updateGLVolume(); // the lighting gradient skipped while only 2D slices were shown
    }
    ui.sliceButtons.forEach((b) => b.setAttribute('aria-pressed', b.dataset.sliceType === name ? 'true' : 'false'));
  };
  ui.sliceButtons.forEach((b) => b.addEventListener('click', () => viewer.setSliceType(b.dataset.sliceType)));

  viewer.goToMm = (mm, draw = true) => {
    const frac = Array.from(nv.mm2frac(mm)).map((f) => Math.min(1, Math.max(0, f)));
    nv.scene.crosshairPos = frac;
    if (draw) {
      nv.drawScene();
      nv.createOnLocationChange();
    }
  };
  viewer.crosshairMm = () => Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
  viewer.goToMarker = (which) => {
    const marker = typeof which === 'number' ? config.markers[which] : config.markers.find((m) => m.name === which);
    if (!marker) throw new ConfigError(`no marker ${JSON.stringify(which)}`);
    nv.setCrosshairColor(parseColor(marker.color));
    viewer.goToMm(marker.mm);
  };
  ui.markerButtons.forEach((b) => b.addEventListener('click', () => viewer.goToMarker(Number(b.dataset.marker))));
  viewer.location = () => viewer.lastLocation ?? null;

  // --- MRI base: swap the bottom layer (alternatives are fetched on first use)
  viewer.baseCfg = config.volumes[0];
  viewer.setBase = async (key) => {
    const base = config.bases.find((b) => b.key === key);
    if (!base) throw new ConfigError(`no MRI base "${key}"`);
    const img = key === config.volumes[0].key ? layers.get(key).image : await viewer.loadLayer(key);
    const previous = nv.volumes[0];
    if (previous === img) return;
    nv.setVolume(img, 0);
    nv.setOpacity(0, 1);
    nv.setOpacity(indexOf(previous), 0);
    viewer.baseCfg = base;
    ui.baseButtons.forEach((b) => b.setAttribute('aria-pressed', b.dataset.base === key ? 'true' : 'false'));
    viewer.refresh();
  };
  ui.baseButtons.forEach((b) => b.addEventListener('click', () => {
    viewer.setBase(b.dataset.base).catch((err) => { ui.error.textContent = err.message; ui.error.hidden = false; });
  }));

  // --- overlays: visibility and opacity
  viewer.setLayerOpacity = async (key, value) => {
    const layer = layers.get(key);
    const x = Math.min(1, Math.max(0, Number(value)));
    if (!layer || !Number.isFinite(x)) throw new ConfigError(`layer "${key}" opacity must be a number in [0, 1]`);
    layer.cfg.opacity = x;
    const row = ui.layerRows[key];
    if (row) row.slider.value = String(x);
    if (layer.cfg.visible) await viewer.setLayerVisible(key, true);
  };
  viewer.setLayerVisible = async (key, on) => {
    const layer = layers.get(key);
    if (!layer) throw new ConfigError(`no layer "${key}"`);
    layer.cfg.visible = Boolean(on);
    const row = ui.layerRows[key];
    if (row) row.toggle.checked = layer.cfg.visible;
    if (ui.readoutBoxes[key]) ui.readoutBoxes[key].hidden = !layer.cfg.visible;
    const img = layer.image ?? (on ? await viewer.loadLayer(key) : null);
    if (!img) return;
    if (indexOf(img) < 0) nv.addVolume(img);
    nv.setOpacity(indexOf(img), layer.cfg.visible ? layer.cfg.opacity : 0);
    if (typeof nv.createOnLocationChange === 'function') nv.createOnLocationChange();
  };
  for (const [key, row] of Object.entries(ui.layerRows)) {
    const report = (err) => { ui.error.textContent = err.message; ui.error.hidden = false; };
    row.toggle.addEventListener('change', () => viewer.setLayerVisible(key, row.toggle.checked).catch(report));
    row.slider.addEventListener('input', () => {
      if (!row.toggle.checked) row.toggle.checked = true;
      layers.get(key).cfg.visible = true;
      viewer.setLayerOpacity(key, row.slider.value).catch(report);
    });
  }

  const pet = config.petIndex;
  if (pet === null) return;
  const petLayer = layers.get(config.volumes[pet].key);
  const petCfg = petLayer.cfg;
  const { opacity, opacityOut, calMin, calMax, colormap } = ui.controls;
  viewer.activePet = 'static';
  const petImages = () => [petLayer.image, layers.get('dynamic')?.image].filter(Boolean);
  const activeImage = () => (viewer.activePet === 'dynamic' ? layers.get('dynamic').image : petLayer.image);

  viewer.setPetOpacity = (value) => {
    const x = Math.min(1, Math.max(0, Number(value)));
    if (!Number.isFinite(x)) throw new ConfigError(`PET opacity must be a number in [0, 1], got ${value}`);
    petCfg.opacity = x;
    nv.setOpacity(indexOf(activeImage()), x);
    opacity.value = String(x);
    opacityOut.textContent = x.toFixed(2);
  };
  opacity.addEventListener('input', () => viewer.setPetOpacity(opacity.value));

  const showWindow = () => {
    calMin.value = String(formatValue(petLayer.image.cal_min));
    calMax.value = String(formatValue(petLayer.image.cal_max));
  };
  viewer.setPetWindow = (min, max) => {
    const lo = Number(min);
    const hi = Number(max);
    if (min === '' || max === '' || !Number.isFinite(lo) || !Number.isFinite(hi) || !(lo < hi)) {
      ui.error.textContent = `PET window: min (${min}) must be a number below max (${max}), in ${petCfg.unit || 'image units'}.`;
      ui.error.hidden = false;
      showWindow();
      return false;
    }
    ui.error.hidden = true;
    for (const img of petImages()) {
      img.cal_min = lo;
      img.cal_max = hi;
    }
    nv.updateGLVolume();
    showWindow();
    return true;
  };
  const onWindow = () => viewer.setPetWindow(calMin.value, calMax.value);
  calMin.addEventListener('change', onWindow);
  calMax.addEventListener('change', onWindow);
  showWindow();

  const names = PET_COLORMAPS.filter((n) => knownColormaps.has(n));
  if (!names.includes(petCfg.colormap)) names.unshift(petCfg.colormap);
  for (const n of names) colormap.append(el('option', { value: n, text: n, selected: n === petCfg.colormap }));
  colormap.value = petCfg.colormap;
  viewer.setPetColormap = (name) => {
    if (!knownColormaps.has(name)) throw new ConfigError(`colormap "${name}" is not a NiiVue colormap`);
    petCfg.colormap = name;
    for (const img of petImages()) nv.setColormap(img.id, name);
    colormap.value = name;
  };
  colormap.addEventListener('change', () => viewer.setPetColormap(colormap.value));

  // --- dynamic PET: one frame in place of the static PET, fetched on first use
  const dyn = config.dynamic;
  const chart = ui.tacChart;
  if (chart && dyn) chart.setMarker(dyn.frames_mid_min[Number(ui.controls.frame.value)], false);
  if (!dyn) return;
  const { dynToggle, frame, frameOut } = ui.controls;
  viewer.showFrame = async (index) => {
    const i = Math.min(dyn.frames_mid_min.length - 1, Math.max(0, Math.round(Number(index))));
    frame.value = String(i);
    frameOut.textContent = frameLabel(dyn, i);
    dynToggle.checked = true;
    if (chart) chart.setMarker(dyn.frames_mid_min[i], true);
    if (!layers.get('dynamic').image) {
      frameOut.textContent = `${frameLabel(dyn, i)} (loading…)`;
      const img = await viewer.loadLayer('dynamic');
      img.cal_min = petLayer.image.cal_min;
      img.cal_max = petLayer.image.cal_max;
      nv.setColormap(img.id, petCfg.colormap);
      frameOut.textContent = frameLabel(dyn, Number(frame.value));
    }
    const img = layers.get('dynamic').image;
    viewer.activePet = 'dynamic';
    nv.setFrame4D(img.id, Number(frame.value));
    nv.setOpacity(indexOf(img), petCfg.opacity);
    nv.setOpacity(indexOf(petLayer.image), 0);
    viewer.refresh();
    viewer.frame = Number(frame.value);
    return viewer.frame;
  };
  viewer.showStatic = () => {
    dynToggle.checked = false;
    viewer.activePet = 'static';
    const img = layers.get('dynamic').image;
    if (img && indexOf(img) >= 0) nv.setOpacity(indexOf(img), 0);
    nv.setOpacity(indexOf(petLayer.image), petCfg.opacity);
    if (chart) chart.setMarker(dyn.frames_mid_min[Number(frame.value)], false);
    viewer.refresh();
  };
  const report = (err) => { ui.error.textContent = `Dynamic PET: ${err.message || err}`; ui.error.hidden = false; };
  frame.addEventListener('input', () => viewer.showFrame(frame.value).catch(report));
  dynToggle.addEventListener('change', () => {
    if (dynToggle.checked) viewer.showFrame(frame.value).catch(report);
    else viewer.showStatic();
  });
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
