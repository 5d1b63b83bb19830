/* The confirmation dialog in front of every action that changes something (cancel a run or a task,
   send a signal): a title, what will happen, optional extra fields, and a check of those fields
   that keeps the dialog open while they are wrong. */

import {fill, h} from './dom.js';

/**
 * Ask before acting. extra: an element shown in the dialog (fields); validate(): an error text to
 * show, or null when the fields are fine. Resolves true (confirmed) or false.
 */
export function confirmDialog(title, text, {extra = null, validate = null, confirm = 'Confirm'} = {}) {
  const dialog = document.getElementById('confirm');
  const form = document.getElementById('confirm-form');
  const place = document.getElementById('confirm-extra');
  const problem = h('p', {class: 'error', role: 'alert', hidden: true});
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-yes').textContent = confirm;
  fill(place, extra, problem);
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener('submit', submit);
      dialog.removeEventListener('cancel', dismissed);
      if (dialog.open) dialog.close();
      fill(place);
      resolve(value);
    };
    const submit = (event) => {
      event.preventDefault();
      if (event.submitter?.value !== 'ok') { done(false); return; }
      const error = validate ? validate() : null;
      if (error) {
        problem.textContent = error;
        problem.hidden = false;
        return;
      }
      done(true);
    };
    const dismissed = () => done(false);
    form.addEventListener('submit', submit);
    dialog.addEventListener('cancel', dismissed);
    dialog.showModal();
    place.querySelector('textarea,input')?.focus();
  });
}
