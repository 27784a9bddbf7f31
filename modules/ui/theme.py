"""Look of the page: a theme that needs no network, and the few CSS rules A1111 users expect."""

from __future__ import annotations

import gradio as gr

# System font stacks only: gradio's default theme ships its fonts, but a font the theme does not
# ship would be fetched from Google Fonts, and the page must work with the network unplugged.
SANS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Consolas", "Liberation Mono", "monospace"]


def make_theme() -> gr.themes.Base:
    # A1111's default: gradio's default theme with an orange accent (the Generate button).
    return gr.themes.Default(primary_hue="orange", font=SANS, font_mono=MONO)


CSS = """
.gradio-container { max-width: 100% !important; }
#quicksettings { align-items: flex-end; gap: 0.5em; }
#quicksettings > .form { flex: 0 1 480px !important; min-width: 320px !important; }
.tool-button { max-width: 2.6em !important; min-width: 2.6em !important; height: 2.6em; align-self: end;
               padding: 0 !important; font-size: 1.1em; }
.generate-button { min-height: 4.5em; font-size: 1.15em; }
.progress-line { font-family: var(--font-mono); font-size: 0.9em; }
.progress-bar { height: 6px; background: var(--neutral-200); border-radius: 3px; overflow: hidden; margin-top: 4px; }
.progress-bar > div { height: 100%; background: var(--color-accent); }
.error-box { border: 1px solid #d33; background: #fff0f0; color: #900; padding: 0.6em 0.8em;
             border-radius: 6px; white-space: pre-wrap; }
.dark .error-box { background: #3a1414; color: #ffb4b4; }
.ok-box { color: var(--body-text-color-subdued); }
"""

# Ctrl+Enter (Cmd+Enter) in a prompt box presses that tab's Generate, as in A1111.
JS = """
() => {
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || !(event.ctrlKey || event.metaKey)) return;
    const box = event.target.closest && event.target.closest('[id$="_prompt"]');
    if (!box) return;
    const button = document.getElementById(box.id.replace(/_(neg_)?prompt$/, '') + '_generate');
    if (button) { event.preventDefault(); button.click(); }
  });
}
"""
