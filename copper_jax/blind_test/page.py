"""The blind test's single page: name, practice, blind test, done. Plain DOM and fetch, no libraries."""
import json


def page(default_expert: str) -> str:
  """The single page: name, practice, blind test, done. Plain DOM and fetch, no libraries."""
  return PAGE.replace("__EXPERT__", json.dumps(default_expert))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Blind test: stress time of SEM images</title>
<link rel="icon" href="data:,">
<style>
body { font-family: sans-serif; max-width: 1100px; margin: 1em auto; padding: 0 1em; color: #222; }
.hidden { display: none; }
.row { display: flex; gap: 8px; align-items: center; margin: 6px 0; }
.row .t { width: 6em; font-weight: bold; }
.row img { width: 180px; }
#question img { width: 100%; max-width: 900px; max-height: 78vh; object-fit: contain; object-position: left top;
  display: block; margin: 0.5em 0; image-rendering: pixelated; }
.answers { display: flex; flex-wrap: wrap; gap: 6px; margin: 0.5em 0; }
.answers button { font-size: 1.1em; min-width: 4em; padding: 0.4em; }
.answers button.chosen { background: #c60; color: white; }
#status { color: #555; min-height: 1.2em; }
#status.error { color: #b00; }
</style></head><body>
<h1>Blind test: the stress time of SEM images</h1>
<section id="name-step" class="hidden">
<p>Your name (letters, digits, '.', '_', '-'); your answers are saved under it, and the same name resumes.</p>
<form id="name-form"><input id="name" required pattern="[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}">
<button>Start</button></form>
</section>
<section id="practice-step" class="hidden">
<h2>Practice: training images by stress time</h2>
<p>Look at these labelled images. Then start the test: the test images come without labels, in random order.</p>
<p><button id="start">Start the blind test</button> <span id="resume-note"></span></p>
<div id="practice"></div>
</section>
<section id="test-step" class="hidden">
<h2 id="counter"></h2>
<p>Which stress time? Your answer is saved as soon as you click.</p>
<div class="answers" id="answers"></div>
<div id="question"><img id="test-image" alt="test image"></div>
<p><button id="previous">previous image</button> <button id="next">next image</button></p>
<p id="status"></p>
</section>
<section id="done-step" class="hidden">
<h2>Done: every test image has an answer.</h2>
<p>Thank you. Your answers are saved; you may close this tab, or <button id="review">review your answers</button>.</p>
</section>
<script>
(function () {
  let expert = __EXPERT__ || new URLSearchParams(location.search).get('expert') || '';
  let state = null, position = 0;
  const $ = function (id) { return document.getElementById(id); };
  function show(step) {
    ['name-step', 'practice-step', 'test-step', 'done-step'].forEach(function (s) {
      $(s).classList.toggle('hidden', s !== step);
    });
  }
  function status(text, error) { $('status').textContent = text; $('status').classList.toggle('error', !!error); }
  function label(t) { return 't = ' + t; }
  function answered() { return state.answers.filter(function (a) { return a !== null; }).length; }
  function firstOpen() { const i = state.answers.indexOf(null); return i < 0 ? state.answers.length : i; }
  async function load() {
    const reply = await fetch('/api/state?expert=' + encodeURIComponent(expert));
    const body = await reply.json();
    if (!reply.ok) { show('name-step'); alert(body.error); return; }
    state = body;
    const practice = $('practice');
    practice.textContent = '';
    state.practice.forEach(function (urls, k) {
      const row = document.createElement('div');
      row.className = 'row';
      const t = document.createElement('span');
      t.className = 't';
      t.textContent = label(state.stress_times[k]);
      row.appendChild(t);
      urls.forEach(function (u) {
        const im = new Image();
        im.src = u;
        im.alt = label(state.stress_times[k]);
        row.appendChild(im);
      });
      practice.appendChild(row);
    });
    const answers = $('answers');
    answers.textContent = '';
    state.stress_times.forEach(function (t, k) {
      const b = document.createElement('button');
      b.className = 'answer';
      b.dataset.label = k;
      b.textContent = t;
      b.addEventListener('click', function () { choose(k); });
      answers.appendChild(b);
    });
    const done = answered();
    $('resume-note').textContent = done ? ('(resumes at image ' + (firstOpen() + 1) + '; ' + done + ' of ' +
        state.answers.length + ' answered)') : '';
    show('practice-step');
  }
  function render() {
    if (position >= state.answers.length) { show('done-step'); return; }
    show('test-step');
    $('counter').textContent = 'Image ' + (position + 1) + ' of ' + state.answers.length;
    $('test-image').src = '/image/test/' + position + '.png?expert=' + encodeURIComponent(expert);
    document.querySelectorAll('button.answer').forEach(function (b) {
      b.classList.toggle('chosen', Number(b.dataset.label) === state.answers[position]);
    });
    $('previous').disabled = position === 0;
    status(answered() + ' of ' + state.answers.length + ' answered');
  }
  async function choose(k) {
    const at = position;
    document.querySelectorAll('button.answer').forEach(function (b) { b.disabled = true; });
    try {
      const reply = await fetch('/api/answer', {method: 'POST', headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({expert: expert, position: at, label: k})});
      const body = await reply.json();
      if (!reply.ok) throw new Error(body.error);
      state.answers[at] = k;
      position = state.answers.indexOf(null, at + 1) >= 0 ? state.answers.indexOf(null, at + 1) : firstOpen();
      render();
    } catch (e) {
      status('Not saved: ' + e.message + '. Click again.', true);
    } finally {
      document.querySelectorAll('button.answer').forEach(function (b) { b.disabled = false; });
    }
  }
  $('start').addEventListener('click', function () { position = firstOpen(); render(); });
  $('previous').addEventListener('click', function () { position = Math.max(0, position - 1); render(); });
  $('next').addEventListener('click', function () {
    position = Math.min(state.answers.length, position + 1);
    render();
  });
  $('review').addEventListener('click', function () { position = 0; render(); });
  $('name-form').addEventListener('submit', function (e) {
    e.preventDefault();
    expert = $('name').value;
    history.replaceState(null, '', '?expert=' + encodeURIComponent(expert));
    load();
  });
  if (expert) load(); else show('name-step');
})();
</script>
</body></html>
"""
