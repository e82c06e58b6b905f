# The MPI communicator and the helpers every multi-rank run uses (launcher detection, failure
# agreement). Always compiled: without MOE_HAVE_MPI the file provides a backend that reports
# MOE_ERR_UNSUPPORTED ("built without MPI"), so callers need no #ifdef.
list(APPEND MOE_AREA_SOURCES comm/comm_mpi.c)
