"""Running the stages: an edition run (`editions.EditionRun`, the one way editions are
claimed, ranked, rendered, sent and recorded), the executors that spread runs of editions
(in this process, over local worker processes, over Celery workers), the senders'
liveness, and the daemon with its leader election."""
