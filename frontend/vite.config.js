// Builds the viewer as one IIFE bundle with stable names for Django's staticfiles:
//   dist/aminopet/viewer.js  and  dist/aminopet/viewer.css   (served at /static/aminopet/...)
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { defineConfig } from 'vite';

const here = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  publicDir: false,
  build: {
    outDir: resolve(here, 'dist/aminopet'),
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2020',
    lib: {
      entry: resolve(here, 'src/main.js'),
      name: 'AminoPETViewerBundle',
      formats: ['iife'],
      fileName: () => 'viewer.js',
      cssFileName: 'viewer',
    },
  },
});
