! melissa_api.f90 - the Fortran interfaces of Melissa's client calls (melissa_api.h), over
! lightning_online's C client. As with Melissa: `include "melissa_api.f90"` in the program (the
! folder is in $(python -m lightning_online.client --cflags)), names end with C_NULL_CHAR, and
! the communicator is an MPI Fortran handle (an INTEGER, e.g. MPI_COMM_WORLD):
!
!   call melissa_init_f("temperature"//C_NULL_CHAR, local_vect_size, comm)
!   call melissa_send("temperature"//C_NULL_CHAR, u)      ! u: local_vect_size REAL(8)
!   call melissa_finalize()
interface
    subroutine melissa_init_f(field_name, local_vect_size, comm) bind(c, name='melissa_init_f')
        use, intrinsic :: iso_c_binding, only: c_char, c_int
        character(kind=c_char), dimension(*), intent(in) :: field_name
        integer(kind=c_int), intent(in) :: local_vect_size
        integer(kind=c_int), intent(in) :: comm
    end subroutine melissa_init_f

    subroutine melissa_send(field_name, send_vect) bind(c, name='melissa_send')
        use, intrinsic :: iso_c_binding, only: c_char, c_double
        character(kind=c_char), dimension(*), intent(in) :: field_name
        real(kind=c_double), dimension(*), intent(in) :: send_vect
    end subroutine melissa_send

    subroutine melissa_finalize() bind(c, name='melissa_finalize')
    end subroutine melissa_finalize
end interface
