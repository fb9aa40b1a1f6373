"""Human review: the decisions ledger, the candidates to look at, thumbnails, the notebook UI, the audit and the
static HTML report. The notebooks in notebooks/ only call into here."""
