// Unit tests of the configuration parser: `npm test` (node --test, no browser).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  ConfigError,
  formatMm,
  formatValue,
  formatWithUnit,
  frameLabel,
  niivueFileName,
  parseConfig,
  readElementConfig,
  tacChartModel,
} from '../src/config.js';

const MRI = { url: '/media/exams/1/t1c.nii.gz', name: 'T1c' };
const PET = { url: '/media/exams/1/pet_static.nii.gz', name: 'FET PET', colormap: 'hot', opacity: 0.5, cal_min: 1, cal_max: 3.5 };

test('defaults: base image gray and opaque, fused volume warm at 0.6, multiplanar', () => {
  const c = parseConfig({ volumes: [MRI, { url: '/pet.nii' }] });
  assert.equal(c.volumes[0].colormap, 'gray');
  assert.equal(c.volumes[0].opacity, 1);
  assert.equal(c.volumes[1].colormap, 'warm');
  assert.equal(c.volumes[1].opacity, 0.6);
  assert.equal(c.volumes[1].name, 'Volume 2');
  assert.equal(c.sliceType, 'multiplanar');
  assert.equal(c.petIndex, 1);
  assert.equal(c.crosshair, null);
  assert.deepEqual(c.markers, []);
  assert.equal(c.radiological, false);
  assert.equal(c.height, null);
});

test('explicit fields are kept and overlays follow the volumes', () => {
  const c = parseConfig({
    volumes: [MRI, PET],
    overlays: [{ url: '/mask.nii.gz', name: 'Mask', colormap: 'red', opacity: 0.3 }],
    crosshair: [1, -2.5, 3],
    sliceType: 'axial',
    markers: [{ name: 'Biopsy target', mm: [4, 5, 6], color: '#ff00ff' }],
  });
  assert.deepEqual(c.volumes.map((v) => v.name), ['T1c', 'FET PET', 'Mask']);
  assert.equal(c.volumes[1].colormap, 'hot');
  assert.equal(c.volumes[1].cal_min, 1);
  assert.equal(c.volumes[1].cal_max, 3.5);
  assert.equal(c.volumes[2].filename, 'mask.nii.gz');
  assert.deepEqual(c.crosshair, [1, -2.5, 3]);
  assert.equal(c.sliceType, 'axial');
  assert.deepEqual(c.markers, [{ name: 'Biopsy target', mm: [4, 5, 6], color: '#ff00ff' }]);
});

test('a single volume has no PET controls', () => {
  assert.equal(parseConfig({ volumes: [MRI] }).petIndex, null);
});

test('file name for NiiVue comes from filename, else the URL, else volume<i>.nii', () => {
  assert.equal(niivueFileName({ url: '/a/b/t1c.nii.gz?sig=1' }, 0), 't1c.nii.gz');
  assert.equal(niivueFileName({ url: '/api/exams/3/volumes/pet_static/' }, 1), 'volume1.nii');
  assert.equal(niivueFileName({ url: '/api/x', filename: 'pet.nii.gz' }, 1), 'pet.nii.gz');
});

const bad = [
  [null, /JSON object/],
  [{}, /"volumes" must be a non-empty list/],
  [{ volumes: [] }, /non-empty list/],
  [{ volumes: [{ name: 'x' }] }, /volumes\[0\]\.url/],
  [{ volumes: [MRI, { url: '/p', opacity: 1.5 }] }, /volumes\[1\]\.opacity must lie in \[0, 1\]/],
  [{ volumes: [MRI, { url: '/p', cal_min: 3, cal_max: 1 }] }, /cal_min \(3\) must be below cal_max \(1\)/],
  [{ volumes: [MRI, { url: '/p', cal_max: 'high' }] }, /volumes\[1\]\.cal_max must be a finite number/],
  [{ volumes: [MRI], sliceType: 'oblique' }, /"sliceType" must be one of/],
  [{ volumes: [MRI], crosshair: [1, 2] }, /"crosshair" must be \[x, y, z\]/],
  [{ volumes: [MRI], markers: [{ name: 'T', mm: [1, 2, 'z'] }] }, /markers\[0\]\.mm\[2\]/],
  [{ volumes: [MRI], markers: [{ mm: [1, 2, 3] }] }, /markers\[0\]\.name/],
  [{ volumes: [MRI, PET], petIndex: 0 }, /"petIndex" must be an integer between 1 and 1/],
  [{ volumes: [MRI], overlays: {} }, /"overlays" must be a list/],
  [{ volumes: [MRI], radiological: 'yes' }, /"radiological" must be true or false/],
  [{ volumes: [MRI], height: -3 }, /"height" must be a positive number/],
  [{ volumes: [MRI, { url: '/p', visible: 'no' }] }, /volumes\[1\]\.visible must be true or false/],
  [{ volumes: [MRI, PET], overlays: [{ url: '/m', key: 'pet' }] }, /layer key "pet" is used twice/],
  [{ volumes: [{ ...MRI, key: 't1c' }], bases: [{ url: '/f', key: 'flair' }] }, /"bases" must include the first volume/],
  [{ volumes: [MRI], bases: [{ url: '/f' }] }, /bases\[0\]\.key/],
  [{ volumes: [MRI], lesion: { mm: [1, 2] } }, /lesion\.mm/],
  [{ volumes: [MRI], dynamic: { url: '/d', frames_mid_min: [5, 2] } }, /frames_mid_min must be strictly increasing/],
  [{ volumes: [MRI], dynamic: { url: '/d', frames_mid_min: [1, 2], frames_duration_min: [1] } }, /1 frames, frames_mid_min 2/],
  [{ volumes: [MRI], tac: { curves: [{ t_min: [1, 2], values: [1] }] } }, /tac\.curves\[0\]: 1 values for 2 times/],
  [{ volumes: [MRI], tac: { curves: [{ t_min: [1], values: [NaN] }] } }, /tac\.curves\[0\]\.values\[0\] must be a finite number/],
];
for (const [raw, pattern] of bad) {
  test(`rejects ${JSON.stringify(raw)}`, () => {
    assert.throws(() => parseConfig(raw), (err) => err instanceof ConfigError && pattern.test(err.message));
  });
}

test('readElementConfig prefers the JSON script child, then data-config', () => {
  const script = { textContent: '{"volumes": [{"url": "/a.nii"}]}' };
  const withScript = { querySelector: () => script, dataset: { config: '{"volumes": []}' } };
  assert.deepEqual(readElementConfig(withScript), { volumes: [{ url: '/a.nii' }] });
  const withAttr = { querySelector: () => null, dataset: { config: '{"volumes": [{"url": "/b.nii"}]}' } };
  assert.deepEqual(readElementConfig(withAttr), { volumes: [{ url: '/b.nii' }] });
  const broken = { querySelector: () => null, dataset: { config: '{volumes' } };
  assert.throws(() => readElementConfig(broken), /data-config attribute is not valid JSON/);
  const none = { querySelector: () => null, dataset: {} };
  assert.throws(() => readElementConfig(none), /has no configuration/);
});

test('readout formatting', () => {
  assert.equal(formatValue(3), '3');
  assert.equal(formatValue(2.345678), '2.346');
  assert.equal(formatValue(0.0001234), '1.234e-4');
  assert.equal(formatValue(NaN), '–');
  assert.equal(formatMm([1.26, -0.04, 100]), '1.3, 0.0, 100.0');
});

test('layers get keys, units, visibility; bases, lesion, dynamic and TAC are parsed', () => {
  const c = parseConfig({
    volumes: [{ ...MRI, key: 't1c', unit: 'a.u.' }, { ...PET, unit: 'SUV', window_basis: 'TBR 1.6 to SUVmax' }],
    bases: [{ url: '/t1c.nii.gz', key: 't1c', name: 'T1c' }, { url: '/flair.nii.gz', key: 'flair', name: 'FLAIR' }],
    overlays: [
      { url: '/voi.nii.gz', key: 'voi', name: 'Tumour VOI', visible: false, opacity: 0.4 },
      { url: '/slope.nii.gz', name: 'Slope', unit: 'SUV/h', colormap: 'green', colormap_negative: 'electric_blue' },
    ],
    lesion: { mm: [10, -20, 30], label: 'tumour SUVmax', suv_max: 6.7, unit: 'SUV' },
    dynamic: { url: '/dyn.nii.gz', filename: 'pet_dynamic.nii.gz', unit: 'SUV', frames_mid_min: [0.5, 1.5, 7.5], frames_duration_min: [1, 1, 5] },
    tac: { x_unit: 'min', y_unit: 'SUV', curves: [{ key: 'tumor', name: 'Tumour VOI', t_min: [0.5, 1.5, 7.5], values: [1, 3, 2.5] }] },
  });
  assert.deepEqual(c.volumes.map((v) => v.key), ['t1c', 'pet', 'voi', 'layer3']);
  assert.equal(c.volumes[1].unit, 'SUV');
  assert.equal(c.volumes[1].window_basis, 'TBR 1.6 to SUVmax');
  assert.equal(c.volumes[2].visible, false);
  assert.equal(c.volumes[3].visible, true);
  assert.equal(c.volumes[3].colormap_negative, 'electric_blue');
  assert.deepEqual(c.bases.map((b) => b.key), ['t1c', 'flair']);
  assert.deepEqual(c.lesion, { mm: [10, -20, 30], label: 'tumour SUVmax', suv_max: 6.7, unit: 'SUV' });
  assert.equal(c.dynamic.key, 'dynamic');
  assert.equal(c.dynamic.filename, 'pet_dynamic.nii.gz');
  assert.deepEqual(c.dynamic.frames_mid_min, [0.5, 1.5, 7.5]);
  assert.equal(c.tac.curves[0].color, '#dddddd');
  assert.equal(c.tac.y_unit, 'SUV');
});

test('absent optional parts are null or empty', () => {
  const c = parseConfig({ volumes: [MRI, PET] });
  assert.deepEqual(c.bases, []);
  assert.equal(c.lesion, null);
  assert.equal(c.dynamic, null);
  assert.equal(c.tac, null);
  assert.deepEqual(c.volumes.map((v) => v.key), ['base', 'pet']);
});

test('values carry their unit; frames their mid-time in minutes', () => {
  assert.equal(formatWithUnit(6.6707, 'SUV'), '6.671 SUV');
  assert.equal(formatWithUnit(812, ''), '812');
  assert.equal(formatWithUnit(NaN, 'SUV'), '–');
  const dyn = { frames_mid_min: [0.25, 1.5, 12.46] };
  assert.equal(frameLabel(dyn, 2), 'frame 3 of 3 · 12.5 min p.i.');
  assert.equal(frameLabel(dyn, 0), 'frame 1 of 3 · 0.3 min p.i.');
});

test('TAC chart: axes from 0 to a nice maximum, points mapped into the box', () => {
  const tac = { curves: [{ t_min: [0.5, 10, 37.5], values: [0.8, 4.2, 3.1] }, { t_min: [0.5, 10, 37.5], values: [0.5, 1, 1] }] };
  const m = tacChartModel(tac, { width: 200, height: 100, left: 20, right: 0, top: 0, bottom: 20 });
  assert.equal(m.xMax, 40);
  assert.equal(m.yMax, 6); // step 2 SUV for a 4.2 SUV peak
  assert.deepEqual(m.xTicks, [0, 10, 20, 30, 40]);
  assert.deepEqual(m.yTicks, [0, 2, 4, 6]);
  assert.equal(m.x(0), 20);
  assert.equal(m.x(40), 200);
  assert.equal(m.y(0), 80);
  assert.equal(m.y(6), 0);
  assert.equal(m.paths.length, 2);
  // t 0.5 min -> x 20 + 0.5/40*180 = 22.25; SUV 0.8 -> y 80 - 0.8/6*80 = 69.33; (10 min, 4.2) -> (65, 24)
  assert.ok(m.paths[0].startsWith('M22.3,69.3 L65.0,24.0'), m.paths[0]);
});
