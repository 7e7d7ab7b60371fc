"""U0 as a potential: force terms of the loss, the ASE calculator, the short-range repulsion, and energies and
forces at QM9's level of theory (B3LYP/6-31G(2df,p), PySCF) or GFN2-xTB (tblite) for displaced geometries."""
