"""Hospital integration over DICOMweb: `medssl pacs pull` (QIDO-RS search, WADO-RS retrieve into a folder with a
manifest), `medssl pacs push` (draft reports stored back as DICOM Enhanced SR, STOW-RS) and the PACS of
`medssl serve --pacs`.

- `client.py`: the connection (`connect`): credentials from the environment or a file, never the command line,
  a CA bundle for HTTPS, timeouts; `pacs_errors` turns every failure of the transport into one line (exit 2).
- `pull.py`: `run_pull`; what is kept on disk is pseudonymised (`deidentify`).
- `sr.py`: `report_sr`, one draft report as an Enhanced SR (highdicom), its coded findings (`FINDING_CODES`).
- `push.py`: `run_push`, idempotent by a SOP Instance UID derived from the study, the model and the text.
"""
