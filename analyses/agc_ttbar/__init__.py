"""The IRIS-HEP Analysis Grand Challenge ttbar analysis (CMS Open Data), differentiable."""
