// Live job progress: polls /jobs/<id>/status/ for every [data-job-status-url] element.
(function () {
  function poll(el) {
    fetch(el.dataset.jobStatusUrl, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((job) => {
        const bar = el.querySelector("progress");
        if (bar) bar.value = job.progress;
        const status = el.querySelector("[data-field=status]");
        if (status) { status.textContent = job.status; status.className = "badge " + job.status; }
        const msg = el.querySelector("[data-field=message]");
        if (msg) msg.textContent = job.message;
        if (!job.finished) setTimeout(() => poll(el), 1000);
        else if (el.dataset.reloadWhenDone) window.location.reload();
      })
      .catch(() => setTimeout(() => poll(el), 3000));
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-job-status-url]").forEach((el) => {
      if (el.dataset.finished !== "true") poll(el);
    });
  });
})();
