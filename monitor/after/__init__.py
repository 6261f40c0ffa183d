"""What reads a run once it has run: ``monitor kill-report`` (``report``, its HTML page
``report_page`` and pictures ``report_plots``), ``monitor replay`` (``replay``) and ``monitor
calibrate`` (``calibrate``).

Only reads the run's records (``monitor.store``, the verdicts and rule changes of
``monitor.driver``); nothing that runs during the run imports it.
"""
