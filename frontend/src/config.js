/**
 * Viewer configuration: parsing and validation (no DOM, no WebGL, unit-tested with `node --test`).
 *
 * A configuration is the JSON a Django template puts in the viewer element, either in a child
 * `<script type="application/json">` or in a `data-config` attribute:
 *
 *   {
 *     "volumes":  [{"url": "...", "name": "T1c", "colormap": "gray"},
 *                  {"url": "...", "name": "FET PET", "colormap": "warm", "opacity": 0.6,
 *                   "cal_min": 1.0, "cal_max": 3.5}],
 *     "overlays": [{"url": "...", "name": "Tumour mask", "colormap": "red", "opacity": 0.4}],
 *     "crosshair": [12.5, -20, 31],
 *     "sliceType": "multiplanar",
 *     "markers":  [{"name": "Biopsy target", "mm": [14, -18, 30], "color": "#00ff00"}],
 *     "radiological": false,
 *     "height": 480
 *   }
 *
 * The first volume is the MRI base image; every further volume, then every overlay, is fused on
 * top in order. The "PET" controls (opacity, window, colormap) act on `petIndex`, by default the
 * second volume. The optional keys `bases` (alternative MRI bases), `lesion`, `dynamic` (a 4D PET
 * with frame times, loaded on demand) and `tac` (time-activity curves) are described in
 * frontend/README.md; apps/quantification/viewer.py builds them.
 */

/** Slice layouts understood by the viewer, mapped to NiiVue's SLICE_TYPE values. */
export const SLICE_TYPES = Object.freeze({
  axial: 0,
  coronal: 1,
  sagittal: 2,
  multiplanar: 3,
  render: 4,
});

/** Default colormap of the base image and of fused volumes. */
export const DEFAULT_BASE_COLORMAP = 'gray';
export const DEFAULT_FUSED_COLORMAP = 'warm';
export const DEFAULT_FUSED_OPACITY = 0.6;
export const DEFAULT_MARKER_COLOR = '#00ff00';

/** File extensions NiiVue recognises from a name (lower case, longest first). */
const IMAGE_EXTENSIONS = ['.nii.gz', '.nii', '.mgz', '.mgh', '.nrrd', '.nhdr', '.mha', '.mhd', '.head', '.v16', '.vmr'];

/** Error raised for an invalid viewer configuration; `message` names the offending field. */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ConfigError';
  }
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function finiteNumber(value, where) {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new ConfigError(`${where} must be a finite number, got ${JSON.stringify(value)}`);
  }
  return value;
}

function optionalNumber(value, where) {
  return value === undefined || value === null ? undefined : finiteNumber(value, where);
}

function mmTriple(value, where) {
  if (!Array.isArray(value) || value.length !== 3) {
    throw new ConfigError(`${where} must be [x, y, z] in millimetres, got ${JSON.stringify(value)}`);
  }
  return value.map((v, i) => finiteNumber(v, `${where}[${i}]`));
}

/**
 * The file name NiiVue should see for a volume (it picks the reader from the extension).
 *
 * Uses `filename` when given, else the last path segment of the URL when it has an image
 * extension, else `volume<index>.nii` (NiiVue recognises gzip from the magic bytes).
 *
 * @param {{url: string, filename?: string}} volume
 * @param {number} index position of the volume in the load order
 * @returns {string}
 */
export function niivueFileName(volume, index) {
  if (volume.filename) return volume.filename;
  const path = volume.url.split(/[?#]/)[0];
  const last = path.split('/').filter(Boolean).pop() || '';
  const lower = last.toLowerCase();
  if (IMAGE_EXTENSIONS.some((ext) => lower.endsWith(ext))) return last;
  return `volume${index}.nii`;
}

function parseVolume(raw, where, index, isBase) {
  if (!isPlainObject(raw)) {
    throw new ConfigError(`${where} must be an object with a "url", got ${JSON.stringify(raw)}`);
  }
  if (typeof raw.url !== 'string' || raw.url.trim() === '') {
    throw new ConfigError(`${where}.url must be a non-empty string`);
  }
  if (raw.filename !== undefined && (typeof raw.filename !== 'string' || raw.filename === '')) {
    throw new ConfigError(`${where}.filename must be a non-empty string when given`);
  }
  const colormap = raw.colormap ?? (isBase ? DEFAULT_BASE_COLORMAP : DEFAULT_FUSED_COLORMAP);
  if (typeof colormap !== 'string' || colormap === '') {
    throw new ConfigError(`${where}.colormap must be a colormap name such as "gray", "warm", "hot"`);
  }
  const opacity = optionalNumber(raw.opacity, `${where}.opacity`) ?? (isBase ? 1 : DEFAULT_FUSED_OPACITY);
  if (opacity < 0 || opacity > 1) {
    throw new ConfigError(`${where}.opacity must lie in [0, 1], got ${opacity}`);
  }
  const calMin = optionalNumber(raw.cal_min, `${where}.cal_min`);
  const calMax = optionalNumber(raw.cal_max, `${where}.cal_max`);
  if (calMin !== undefined && calMax !== undefined && !(calMin < calMax)) {
    throw new ConfigError(`${where}: cal_min (${calMin}) must be below cal_max (${calMax})`);
  }
  const name = raw.name === undefined ? `Volume ${index + 1}` : String(raw.name);
  const volume = { url: raw.url, name, colormap, opacity, cal_min: calMin, cal_max: calMax };
  if (raw.filename !== undefined) volume.filename = raw.filename;
  volume.filename = niivueFileName(volume, index);
  volume.key = optionalString(raw.key, `${where}.key`);
  volume.unit = optionalString(raw.unit, `${where}.unit`, true) ?? '';
  volume.description = optionalString(raw.description, `${where}.description`, true) ?? '';
  volume.window_basis = optionalString(raw.window_basis, `${where}.window_basis`, true) ?? '';
  volume.colormap_negative = optionalString(raw.colormap_negative, `${where}.colormap_negative`) ?? '';
  if (raw.visible !== undefined && typeof raw.visible !== 'boolean') {
    throw new ConfigError(`${where}.visible must be true or false`);
  }
  volume.visible = raw.visible ?? true;
  return volume;
}

function optionalString(value, where, allowEmpty = false) {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || (!allowEmpty && value === '')) {
    throw new ConfigError(`${where} must be a ${allowEmpty ? '' : 'non-empty '}string when given`);
  }
  return value;
}

function numberList(value, where, { minLength = 1, increasing = false } = {}) {
  if (!Array.isArray(value) || value.length < minLength) {
    throw new ConfigError(`${where} must be a list of at least ${minLength} numbers`);
  }
  const out = value.map((v, i) => finiteNumber(v, `${where}[${i}]`));
  if (increasing && out.some((v, i) => i > 0 && !(v > out[i - 1]))) {
    throw new ConfigError(`${where} must be strictly increasing`);
  }
  return out;
}

function parseDynamic(raw) {
  if (raw === undefined || raw === null) return null;
  const where = 'viewer config "dynamic"';
  if (!isPlainObject(raw)) throw new ConfigError(`${where} must be an object with "url" and "frames_mid_min"`);
  const volume = parseVolume({ colormap: 'warm', ...raw }, 'dynamic', 0, false);
  const mid = numberList(raw.frames_mid_min, 'dynamic.frames_mid_min', { increasing: true });
  const duration = raw.frames_duration_min === undefined || raw.frames_duration_min === null
    ? null
    : numberList(raw.frames_duration_min, 'dynamic.frames_duration_min');
  if (duration && duration.length !== mid.length) {
    throw new ConfigError(`dynamic.frames_duration_min has ${duration.length} frames, frames_mid_min ${mid.length}`);
  }
  return { ...volume, key: 'dynamic', frames_mid_min: mid, frames_duration_min: duration };
}

function parseTac(raw) {
  if (raw === undefined || raw === null) return null;
  if (!isPlainObject(raw) || !Array.isArray(raw.curves)) {
    throw new ConfigError('viewer config "tac" must be an object with a "curves" list');
  }
  const curves = raw.curves.map((c, i) => {
    const where = `tac.curves[${i}]`;
    if (!isPlainObject(c)) throw new ConfigError(`${where} must be an object`);
    const t = numberList(c.t_min, `${where}.t_min`, { increasing: true });
    const values = numberList(c.values, `${where}.values`);
    if (values.length !== t.length) {
      throw new ConfigError(`${where}: ${values.length} values for ${t.length} times`);
    }
    return {
      key: optionalString(c.key, `${where}.key`) ?? `curve${i}`,
      name: optionalString(c.name, `${where}.name`) ?? `Curve ${i + 1}`,
      color: optionalString(c.color, `${where}.color`) ?? '#dddddd',
      t_min: t,
      values,
    };
  });
  return {
    x_label: optionalString(raw.x_label, 'tac.x_label', true) ?? 'time',
    x_unit: optionalString(raw.x_unit, 'tac.x_unit', true) ?? 'min',
    y_label: optionalString(raw.y_label, 'tac.y_label', true) ?? '',
    y_unit: optionalString(raw.y_unit, 'tac.y_unit', true) ?? 'SUV',
    curves,
  };
}

/**
 * Validate a raw configuration object and fill in defaults.
 *
 * @param {unknown} raw parsed JSON
 * `radiological` shows the patient's left on the right of the screen (radiological
 * convention); the default is the neurological convention (left on the left).
 *
 * @returns {{volumes: object[], crosshair: number[]|null, sliceType: string,
 *            markers: {name: string, mm: number[], color: string}[], petIndex: number|null,
 *            height: string|null, radiological: boolean}}
 *   `volumes` holds the configured volumes followed by the overlays, each with `url`, `name`,
 *   `filename` (what NiiVue sees), `colormap`, `opacity`, `cal_min`, `cal_max`.
 * @throws {ConfigError} naming the field and the reason.
 */
export function parseConfig(raw) {
  if (!isPlainObject(raw)) {
    throw new ConfigError('viewer config must be a JSON object with a "volumes" list');
  }
  if (!Array.isArray(raw.volumes) || raw.volumes.length === 0) {
    throw new ConfigError('viewer config "volumes" must be a non-empty list (first = MRI base image)');
  }
  const overlays = raw.overlays ?? [];
  if (!Array.isArray(overlays)) {
    throw new ConfigError('viewer config "overlays" must be a list when given');
  }
  const volumes = raw.volumes.map((v, i) => parseVolume(v, `volumes[${i}]`, i, i === 0));
  overlays.forEach((v, j) => {
    volumes.push(parseVolume(v, `overlays[${j}]`, volumes.length, false));
  });

  const sliceType = raw.sliceType ?? 'multiplanar';
  if (typeof sliceType !== 'string' || !(sliceType in SLICE_TYPES)) {
    throw new ConfigError(
      `viewer config "sliceType" must be one of ${Object.keys(SLICE_TYPES).join(', ')}, got ${JSON.stringify(sliceType)}`,
    );
  }

  const crosshair = raw.crosshair === undefined || raw.crosshair === null
    ? null
    : mmTriple(raw.crosshair, 'viewer config "crosshair"');

  const rawMarkers = raw.markers ?? [];
  if (!Array.isArray(rawMarkers)) {
    throw new ConfigError('viewer config "markers" must be a list when given');
  }
  const markers = rawMarkers.map((m, i) => {
    if (!isPlainObject(m)) throw new ConfigError(`markers[${i}] must be an object with "name" and "mm"`);
    if (typeof m.name !== 'string' || m.name.trim() === '') {
      throw new ConfigError(`markers[${i}].name must be a non-empty string`);
    }
    const color = m.color ?? DEFAULT_MARKER_COLOR;
    if (typeof color !== 'string' || color === '') {
      throw new ConfigError(`markers[${i}].color must be a CSS colour string`);
    }
    return { name: m.name, mm: mmTriple(m.mm, `markers[${i}].mm`), color };
  });

  let petIndex = volumes.length > 1 ? 1 : null;
  if (raw.petIndex !== undefined && raw.petIndex !== null) {
    const idx = raw.petIndex;
    if (!Number.isInteger(idx) || idx < 1 || idx >= volumes.length) {
      throw new ConfigError(
        `viewer config "petIndex" must be an integer between 1 and ${volumes.length - 1} (a fused volume), got ${JSON.stringify(idx)}`,
      );
    }
    petIndex = idx;
  }

  let height = null;
  if (raw.height !== undefined && raw.height !== null) {
    if (typeof raw.height === 'number' && raw.height > 0) height = `${raw.height}px`;
    else if (typeof raw.height === 'string' && raw.height !== '') height = raw.height;
    else throw new ConfigError('viewer config "height" must be a positive number of pixels or a CSS length');
  }

  if (raw.radiological !== undefined && typeof raw.radiological !== 'boolean') {
    throw new ConfigError('viewer config "radiological" must be true or false');
  }
  const radiological = raw.radiological ?? false;

  // Every layer has a unique key: the base, the PET and the overlays are driven by it.
  const seen = new Set();
  volumes.forEach((v, i) => {
    if (!v.key) v.key = i === 0 ? 'base' : i === petIndex ? 'pet' : `layer${i}`;
    if (seen.has(v.key)) throw new ConfigError(`layer key "${v.key}" is used twice`);
    seen.add(v.key);
  });

  const rawBases = raw.bases ?? [];
  if (!Array.isArray(rawBases)) throw new ConfigError('viewer config "bases" must be a list when given');
  const bases = rawBases.map((b, i) => {
    const base = parseVolume(b, `bases[${i}]`, 0, true);
    if (!base.key) throw new ConfigError(`bases[${i}].key must name the base (e.g. "t1c", "flair")`);
    return base;
  });
  if (bases.length > 0 && !bases.some((b) => b.key === volumes[0].key)) {
    throw new ConfigError(`viewer config "bases" must include the first volume (key "${volumes[0].key}")`);
  }

  let lesion = null;
  if (raw.lesion !== undefined && raw.lesion !== null) {
    if (!isPlainObject(raw.lesion)) throw new ConfigError('viewer config "lesion" must be an object with "mm"');
    lesion = {
      mm: mmTriple(raw.lesion.mm, 'lesion.mm'),
      label: optionalString(raw.lesion.label, 'lesion.label', true) ?? 'lesion',
      suv_max: optionalNumber(raw.lesion.suv_max, 'lesion.suv_max') ?? null,
      unit: optionalString(raw.lesion.unit, 'lesion.unit', true) ?? '',
    };
  }

  return {
    volumes, crosshair, sliceType, markers, petIndex, height, radiological, bases, lesion,
    dynamic: parseDynamic(raw.dynamic), tac: parseTac(raw.tac),
  };
}

/**
 * Display text of a value with its unit: `6.67 SUV`, `12.5 min`, `812` (no unit), `–` (none).
 *
 * @param {number} value
 * @param {string} [unit]
 * @returns {string}
 */
export function formatWithUnit(value, unit = '') {
  const text = formatValue(value);
  return unit && text !== '–' ? `${text} ${unit}` : text;
}

/**
 * Label of a dynamic frame: `frame 5 of 21 · 12.5 min p.i.` (mid-time after injection).
 *
 * @param {{frames_mid_min: number[]}} dynamic
 * @param {number} index zero-based frame
 * @returns {string}
 */
export function frameLabel(dynamic, index) {
  const n = dynamic.frames_mid_min.length;
  const t = dynamic.frames_mid_min[index];
  return `frame ${index + 1} of ${n} · ${(Math.round(t * 10) / 10).toFixed(1)} min p.i.`;
}

function niceStep(span, ticks) {
  const raw = span / Math.max(1, ticks);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

/**
 * Geometry of the TAC chart (pure, unit-tested): axis ranges from 0, "nice" ticks, one SVG path per
 * curve, and the x position of a time marker.
 *
 * @param {{curves: {t_min: number[], values: number[]}[]}} tac
 * @param {{width: number, height: number, left?: number, right?: number, top?: number, bottom?: number}} box
 * @returns {{x: (t: number) => number, y: (v: number) => number, xMax: number, yMax: number,
 *            xTicks: number[], yTicks: number[], paths: string[]}}
 */
export function tacChartModel(tac, box) {
  const { width, height, left = 34, right = 8, top = 8, bottom = 26 } = box;
  const allT = tac.curves.flatMap((c) => c.t_min);
  const allV = tac.curves.flatMap((c) => c.values);
  const tStep = niceStep(Math.max(...allT, 1), 4);
  const xMax = Math.ceil(Math.max(...allT, 1) / tStep) * tStep;
  const vStep = niceStep(Math.max(...allV, 0.1), 4);
  const yMax = Math.ceil(Math.max(...allV, 0.1) / vStep) * vStep;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const x = (t) => left + (t / xMax) * plotW;
  const y = (v) => top + plotH - (Math.max(0, v) / yMax) * plotH;
  const ticks = (max, step) => Array.from({ length: Math.round(max / step) + 1 }, (_, i) => Number((i * step).toPrecision(6)));
  const paths = tac.curves.map((c) => c.t_min
    .map((t, i) => `${i === 0 ? 'M' : 'L'}${x(t).toFixed(1)},${y(c.values[i]).toFixed(1)}`).join(' '));
  return { x, y, xMax, yMax, xTicks: ticks(xMax, tStep), yTicks: ticks(yMax, vStep), paths };
}

/**
 * Read the raw configuration of a viewer element.
 *
 * Looks for a child `<script type="application/json">` first, then the `data-config` attribute.
 *
 * @param {Element} element
 * @returns {unknown} the parsed JSON
 * @throws {ConfigError} when neither is present or the JSON does not parse.
 */
export function readElementConfig(element) {
  const script = element.querySelector('script[type="application/json"]');
  let text = null;
  let source = null;
  if (script) {
    text = script.textContent;
    source = 'the <script type="application/json"> child';
  } else if (element.dataset && element.dataset.config) {
    text = element.dataset.config;
    source = 'the data-config attribute';
  }
  if (text === null) {
    throw new ConfigError(
      'viewer element has no configuration: add a <script type="application/json"> child or a data-config attribute',
    );
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`viewer configuration in ${source} is not valid JSON: ${err.message}`);
  }
}

/**
 * Format a voxel value for the readout (4 significant digits, integers unchanged).
 *
 * @param {number} value
 * @returns {string}
 */
export function formatValue(value) {
  if (typeof value !== 'number' || Number.isNaN(value)) return '–';
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}

/**
 * Format a millimetre coordinate triple for the readout, one decimal.
 *
 * @param {ArrayLike<number>} mm
 * @returns {string}
 */
export function formatMm(mm) {
  return Array.from(mm).slice(0, 3).map((v) => (Math.round(v * 10) / 10).toFixed(1)).join(', ');
}
