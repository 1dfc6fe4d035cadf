/**
 * tpi-jupyter: a left sidebar listing the tasks the tpi-jupyter server
 * extension knows, with their details, live log, actions and result files.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';

import { TpiClient } from './api';
import { TaskPanel } from './panel';

export { TaskPanel } from './panel';
export { SidebarPoll } from './polling';
export { TpiClient } from './api';

const CLOUD_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" d="M19.35 10.04A7.49 7.49 0 0 0 12 4C9.11 4 6.6 5.64 5.35 8.04A5.994 5.994 0 0 0 0 14c0 3.31 2.69 6 6 6h13c2.76 0 5-2.24 5-5 0-2.64-2.05-4.78-4.65-4.96zM19 18H6c-2.21 0-4-1.79-4-4s1.79-4 4-4h.71l.66-1.5A5.5 5.5 0 0 1 12 6c2.63 0 4.88 1.86 5.39 4.43l.3 1.5 1.53.11A2.98 2.98 0 0 1 22 15c0 1.65-1.35 3-3 3z"/>
  <path class="jp-icon3" fill="#616161" d="M11 10.5h2v3.5h2.5L12 17.5 8.5 14H11z"/>
</svg>`;

export const tpiIcon = new LabIcon({ name: 'tpi-jupyter:cloud', svgstr: CLOUD_SVG });

const COMMAND = 'tpi-jupyter:show-tasks';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'tpi-jupyter:sidebar',
  description: 'A sidebar with tpi-jupyter tasks: status, log, stop/pull/destroy, result files.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new TaskPanel({ client: new TpiClient(), commands: app.commands });
    panel.title.icon = tpiIcon;
    app.shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(COMMAND, {
      label: 'Show TPI Tasks',
      caption: 'Open the TPI tasks sidebar',
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: COMMAND, category: 'TPI' });
  }
};

export default plugin;
