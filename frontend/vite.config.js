// Builds the viewer as one IIFE bundle with stable names for Django's staticfiles:
//   dist/aminopet/viewer.js  and  dist/aminopet/viewer.css   (served at /static/aminopet/...)
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { defineConfig } from 'vite';

const here = fileURLToPath(new URL('.', import.meta.url));

/**
 * NiiVue 0.69 recomputes the volume-rendering gradient texture (blur + Sobel passes over the whole
 * 3D texture) on every layer refresh: each added volume, opacity or window change. With software
 * WebGL (SwiftShader, hospital thin clients, VMs) that is seconds before the first 2D image, for a
 * texture only the 3D view uses. This patch lets the viewer skip it while no 3D view is shown
 * (`nv.aminopetSkipGradient()`); the viewer refreshes the layers when the 3D layout is chosen.
 * The build fails if NiiVue's code no longer matches, so an upgrade cannot silently drop it.
 */
function skipGradientWhile2D() {
  const needle = '      this.volumeTexture = outTexture;\n      this.gradientTexture = gradientGL({';
  return {
    name: 'aminopet-niivue-skip-gradient',
    transform(code, id) {
      if (!id.replace(/\\/g, '/').endsWith('@niivue/niivue/build/niivue/index.js')) return null;
      const count = code.split(needle).length - 1;
      if (count !== 1) {
        throw new Error(`aminopet-niivue-skip-gradient: expected 1 gradient update in NiiVue's refreshLayers, found ${count}`);
      }
      return {
        code: code.replace(needle, '      this.volumeTexture = outTexture;\n'
          + '      if (this.aminopetSkipGradient && this.aminopetSkipGradient()) this.aminopetGradientStale = true;\n'
          + '      else this.gradientTexture = gradientGL({'),
        map: null,
      };
    },
  };
}

export default defineConfig({
  publicDir: false,
  plugins: [skipGradientWhile2D()],
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
