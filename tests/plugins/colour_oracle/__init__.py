"""A test-only method: the colour oracle. It shows that a new pipeline is one package plus one catalogue entry
(``catalogue.json`` here, named in ``$RIS_PIPELINE_CATALOGUES``), and gives the benchmark's tests a pipeline
whose answers are known in advance on the synthetic set."""
