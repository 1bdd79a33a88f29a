from django.urls import path

from jobs.benchmarks import apis

urlpatterns = [
    path("jobs/<uuid:job_id>/benchmarks/", apis.JobBenchmarkListApi.as_view(), name="api-job-benchmarks"),
    path("benchmarks/", apis.BenchmarkListApi.as_view(), name="api-benchmarks"),
    path("benchmarks/suites/", apis.SuiteListApi.as_view(), name="api-benchmark-suites"),
    path("benchmarks/<uuid:run_id>/", apis.BenchmarkApi.as_view(), name="api-benchmark"),
    path("benchmarks/<uuid:run_id>/cancel/", apis.BenchmarkCancelApi.as_view(), name="api-benchmark-cancel"),
    path("datasets/<uuid:dataset_id>/leaderboard/", apis.LeaderboardApi.as_view(), name="api-dataset-leaderboard"),
]
