/**
 * Bundle entry: `window.AminoPET.viewer = {mount, mountAll, parseConfig, version}` and
 * auto-mount of every `[data-aminopet-viewer]` element once the DOM is parsed.
 */
import './viewer.css';

import { ConfigError, parseConfig } from './config.js';
import { mount, mountAll } from './viewer.js';

const api = { mount, mountAll, parseConfig, ConfigError, version: '0.1.0' };
const root = (window.AminoPET = window.AminoPET || {});
root.viewer = api;

function autoMount() {
  try {
    mountAll(document);
  } catch (err) {
    console.error('AminoPET viewer:', err);
  }
}

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', autoMount, { once: true });
} else {
  autoMount();
}

export default api;
