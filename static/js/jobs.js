// Live job progress: polls /jobs/<id>/status/ for every [data-job-status-url] element.
// Every second while the job moves; slower (up to every 5 s) while nothing changes, so many open
// job pages do not keep the web workers busy with identical answers.
(function () {
  function poll(el, delay, last) {
    fetch(el.dataset.jobStatusUrl, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((job) => {
        const bar = el.querySelector("progress");
        if (bar) bar.value = job.progress;
        const status = el.querySelector("[data-field=status]");
        if (status) { status.textContent = job.status; status.className = "badge " + job.status; }
        const msg = el.querySelector("[data-field=message]");
        if (msg) msg.textContent = job.message;
        const stale = el.querySelector("[data-field=stale]");
        if (stale) stale.hidden = !job.stale;
        const seen = job.status + " " + job.progress + " " + job.message;
        const next = seen === last ? Math.min(delay * 1.5, 5000) : 1000;
        if (!job.finished) setTimeout(() => poll(el, next, seen), next);
        else if (el.dataset.reloadWhenDone) window.location.reload();
      })
      .catch(() => setTimeout(() => poll(el, 3000, last), 3000));
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-job-status-url]").forEach((el) => {
      if (el.dataset.finished !== "true") poll(el, 1000, null);
    });
  });
})();
