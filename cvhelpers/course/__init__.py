"""The course machinery, apart from the ML library: the lesson helper notebooks start with
(``lesson``), the results they record (``results``), the notebook runner (``runner``), the
website (``site``), the workshop kit (``workshop``) and the course-wide model table (``report``).

It imports nothing from the ML side of ``cvhelpers`` but the environment set-up
(:mod:`cvhelpers.env`) and file helpers (:mod:`cvhelpers.files`); a test walks the imports."""
