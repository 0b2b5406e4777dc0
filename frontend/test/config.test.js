// Unit tests of the configuration parser: `npm test` (node --test, no browser).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  ConfigError,
  formatMm,
  formatValue,
  niivueFileName,
  parseConfig,
  readElementConfig,
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
