"""The bytes behind a presigned URL: a small generated document per job step.

A ``.pdf`` file name gives a real, minimal PDF (viewers open it); any other
extension gives UTF-8 text. Either names the job, the step and the inputs, so
a test can check that it downloaded the right document.
"""

from __future__ import annotations

import mimetypes

from .jobs import Job, StepPlan, iso


def document_for(job: Job, plan: StepPlan) -> tuple[bytes, str, str]:
    """Return ``(content, content_type, filename)`` for a document step of ``job``."""
    filename = job.document_filename(plan)
    lines = [
        f"{job.app_name} - {plan.step.display_name}",
        f"Job: {job.job_id}",
        f"Step: {plan.step.id} (step {plan.position + 1} of {job.number_of_steps})",
        f"Generated: {iso(plan.end)}",
        "Inputs:",
        *(f"  {name}: {label}" for name, label in job.input_labels.items()),
    ]
    if filename.lower().endswith(".pdf"):
        return pdf_document(lines), "application/pdf", filename
    guessed = mimetypes.guess_type(filename)[0] or "text/plain"
    if not guessed.startswith("text/"):
        guessed = "text/plain"
    return ("\n".join(lines) + "\n").encode(), f"{guessed}; charset=utf-8", filename


def pdf_document(lines: list[str]) -> bytes:
    """A one-page PDF 1.4 showing ``lines`` in Helvetica (Latin-1; others become ``?``)."""
    text = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
    for line in lines:
        text.append(f"({_pdf_string(line)}) Tj T*")
    text.append("ET")
    stream = "\n".join(text).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _pdf_string(text: str) -> str:
    safe = text.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
